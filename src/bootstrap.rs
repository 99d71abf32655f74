//! Bootstrapping a new member: who it is and where it starts. A member of a
//! new cluster derives its IDs, membership and starting point from the
//! flags (every initial member the same); a member joining a running
//! cluster asks the members named in `--initial-cluster` (discovery) and
//! finds itself among the members MemberAdd added. The starting point is
//! then written by [`storage::bootstrap`](crate::storage::bootstrap) or
//! [`storage::restore`](crate::storage::restore).

use std::time::Duration;

use raft::eraftpb::ConfState;

use crate::config::Config;
use crate::error::{DiscoveryError, PeerError};
use crate::proto::etcdserverpb::Member;
use crate::proto::metastorepb;
use crate::state_machine::membership::{cluster_id, member_id, Membership};
use crate::storage::engine::AppliedPoint;
use crate::storage::Identity;

/// A brand-new member's starting point.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Who it is.
    pub identity: Identity,
    /// Where its state and log start.
    pub point: AppliedPoint,
}

/// A member of a new cluster: every initial member derives the same IDs,
/// membership and starting point from the same flags.
pub fn plan_new(cfg: &Config) -> Result<Bootstrap, crate::error::ConfigError> {
    let initial = cfg.initial_members()?;
    let members: Vec<Member> = initial
        .iter()
        .map(|(name, urls)| Member {
            id: member_id(urls, &cfg.initial_cluster_token),
            name: name.clone(),
            peer_ur_ls: urls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: false,
        })
        .collect();
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cid = cluster_id(&ids);
    let me = member_id(&cfg.advertise_peer_list(), &cfg.initial_cluster_token);
    let membership = Membership::new(cid, members);
    Ok(Bootstrap {
        identity: Identity {
            member_id: me,
            cluster_id: cid,
        },
        point: AppliedPoint {
            index: 1,
            term: 1,
            conf_state: membership.conf_state(),
            membership: membership.to_pb(),
            leases: Default::default(),
            auth: Default::default(),
        },
    })
}

/// Asks the members listed in `--initial-cluster` (other than this one)
/// for the cluster as they know it; the first answer counts.
pub fn discover(cfg: &Config) -> Result<metastorepb::Membership, DiscoveryError> {
    discover_rounds(cfg, 3)
}

/// [`discover`], one round only.
pub fn discover_once(cfg: &Config) -> Result<metastorepb::Membership, DiscoveryError> {
    discover_rounds(cfg, 1)
}

fn discover_rounds(cfg: &Config, rounds: usize) -> Result<metastorepb::Membership, DiscoveryError> {
    let initial = cfg.initial_members()?;
    let mine = cfg.advertise_peer_list();
    let urls: Vec<String> = initial
        .into_iter()
        .filter(|(name, _)| *name != cfg.name)
        .flat_map(|(_, urls)| urls)
        .filter(|u| !mine.contains(u))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DiscoveryError::Runtime)?;
    // Auto-TLS certificates exist before a member asks anyone.
    crate::tls::ensure_self_signed(cfg)?;
    let dialer = crate::tls::Dialer::from_config(cfg)?;
    rt.block_on(async {
        let mut errors = Vec::new();
        for round in 0..rounds {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            for url in &urls {
                match ask_membership(&dialer, url).await {
                    Ok(m) => return Ok(m),
                    Err(e) => errors.push((url.clone(), e)),
                }
            }
        }
        Err(DiscoveryError::NoAnswer(errors))
    })
}

async fn ask_membership(
    dialer: &crate::tls::Dialer,
    url: &str,
) -> Result<metastorepb::Membership, PeerError> {
    use crate::proto::metastorepb::peer_client::PeerClient;
    let (endpoint, connector) = dialer.endpoint(url).map_err(PeerError::Connect)?;
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| PeerError::Connect(e.to_string()))?;
    PeerClient::new(channel)
        .membership(metastorepb::MembershipRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| PeerError::from_status(&s))
}

/// A member joining a running cluster (`--initial-cluster-state existing`,
/// after `etcdctl member add`): its ID is the one MemberAdd gave its peer
/// URLs. It starts empty; the leader sends it a snapshot.
pub fn plan_join(cfg: &Config) -> Result<Bootstrap, DiscoveryError> {
    let pb = discover(cfg)?;
    let mut mine = cfg.advertise_peer_list();
    mine.sort();
    let me = pb.members.iter().find(|m| {
        let mut urls = m.peer_ur_ls.clone();
        urls.sort();
        urls == mine
    });
    let Some(me) = me else {
        return Err(DiscoveryError::NotAdded {
            name: cfg.name.clone(),
            urls: mine.join(","),
        });
    };
    Ok(Bootstrap {
        identity: Identity {
            member_id: me.id,
            cluster_id: pb.cluster_id,
        },
        point: AppliedPoint {
            index: 0,
            term: 0,
            conf_state: ConfState::default(),
            membership: pb,
            leases: Default::default(),
            auth: Default::default(),
        },
    })
}
