//! A stored value: one word in its version, shared by reference count.
//!
//! A million keys means a million versions, so every word of [`Version`]
//! counts. `Bytes` is four words (32 B) inline, and the first time a value
//! built from a `Vec` is shared (a read, a watch event) it also allocates a
//! 32 B header that stays with the value. Here the version holds one
//! pointer (or none: empty values, tombstones and the rocksdb engine's
//! value-less index allocate nothing), the reference count and the bytes'
//! own pointer sit in one small allocation beside the bytes, and a reader
//! gets a `Bytes` over the same bytes (a small allocation, no copy).
//!
//! [`Version`]: super::history::Version

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;

/// The bytes of one stored version (see the module docs).
#[derive(Clone, Default, PartialEq, Eq)]
pub(super) struct Value(Option<Arc<Box<[u8]>>>);

/// What a `Bytes` handed out by [`Value::to_bytes`] keeps alive.
struct Owner(Arc<Box<[u8]>>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Value {
    /// Takes the bytes over: without a copy when `bytes` is the only handle
    /// on a buffer of its own length (as a decoded or cloned request's
    /// value is), else with one.
    pub(super) fn new(bytes: Bytes) -> Value {
        if bytes.is_empty() {
            return Value(None);
        }
        Value(Some(Arc::new(Vec::from(bytes).into_boxed_slice())))
    }

    /// The bytes as a `Bytes` for a response or an event: shares them.
    pub(super) fn to_bytes(&self) -> Bytes {
        match &self.0 {
            None => Bytes::new(),
            Some(shared) => Bytes::from_owner(Owner(Arc::clone(shared))),
        }
    }
}

impl Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            None => &[],
            Some(shared) => shared,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.deref().escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_one_word_and_empty_values_allocate_nothing() {
        assert_eq!(std::mem::size_of::<Value>(), std::mem::size_of::<usize>());
        assert!(Value::new(Bytes::new()).0.is_none());
    }

    #[test]
    fn a_value_shares_its_bytes_with_what_it_hands_out() {
        let v = Value::new(Bytes::from(b"hello".to_vec()));
        let out = v.to_bytes();
        assert_eq!(&out[..], b"hello");
        assert_eq!(
            out.as_ptr(),
            v.as_ptr(),
            "handed-out bytes must not be a copy"
        );
        let Some(shared) = &v.0 else {
            panic!("a non-empty value holds its bytes");
        };
        assert_eq!(Arc::strong_count(shared), 2);
        drop(out);
        assert_eq!(Arc::strong_count(shared), 1);
    }

    #[test]
    fn a_sole_vec_backed_buffer_is_taken_over_without_a_copy() {
        let vec = b"payload".to_vec();
        let at = vec.as_ptr();
        let v = Value::new(Bytes::from(vec));
        assert_eq!(v.as_ptr(), at);
        // A slice of a larger buffer is copied (it must not pin the rest).
        let big = Bytes::from(vec![7u8; 64]);
        let part = Value::new(big.slice(8..16));
        assert_ne!(part.as_ptr(), big[8..].as_ptr());
        assert_eq!(&*part, &[7u8; 8]);
    }
}
