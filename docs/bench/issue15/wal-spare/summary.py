import json,sys
for f in sys.argv[1:]:
    d=json.load(open(f))
    for r in d['results']:
        tl=r['timeline']
        big=[(round(b['t_s'],1),round(b['max_us']/1000)) for b in tl if b['max_us']>60000]
        print(f, r['server'], 'ops/s %.0f'%r['ops_per_s'], 'p50 %.1f p99 %.1f p999 %.1f max %.1f ms'%tuple(r['latency_us'][k]/1000 for k in ['p50','p99','p999','max']), 'elapsed %.1f'%r['elapsed_s'])
        print('  windows with max>60ms:', big)
