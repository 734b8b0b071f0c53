//! The provider keystore on one node: organisations' private keys, kept in the replicated
//! views only as blobs wrapped under the provider's key-encryption key (KEK), unwrapped on
//! first use with the KEK file this node was given and cached in memory (zeroized when
//! dropped). Any node can therefore seal and open for any organisation of its provider,
//! and the KEK itself never enters the log. During a KEK rotation a node also holds the
//! previous KEKs ([`KekRing`]): each blob names the KEK it was wrapped under, and the
//! re-wrap (`Admin.RewrapKeys`) wraps every key set under the current one again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sealpost_core::ids::HpiO;
use sealpost_crypto::kek::Kek;
use sealpost_crypto::keys::OrgKeys;
use sealpost_store::StateView;

/// Most unwrapped key sets one node keeps in memory; beyond this the cache is cleared
/// (unwrapping again is cheap).
pub const KEYSTORE_CACHE_ENTRIES_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("organisation {org} has no provider-held key {key_id}")]
    Unknown { org: HpiO, key_id: String },
    #[error("the keystore cannot be read: {0}")]
    Store(#[from] sealpost_store::Error),
    #[error("the wrapped keys of {org} ({key_id}) cannot be unwrapped: {source}")]
    Unwrap {
        org: HpiO,
        key_id: String,
        #[source]
        source: Box<sealpost_crypto::Error>,
    },
}

/// Keystore entries a node looks through, at most, for provider-held keys to check its KEK
/// against ([`check_kek`]).
pub const KEK_CHECK_KEYS_SCANNED_MAX: usize = 10_000;

/// Checks that `keks` unwrap the provider-held keys in `view`: the first key set in key
/// order (outside a rotation every one is wrapped under the same KEK), unwrapped with the
/// KEK it names and dropped (zeroized) at once. A node runs it before it serves, and a
/// restore before it writes the Raft log, so a node given another provider's KEK, or a
/// stale one, stops with an error naming both KEK ids instead of failing every send later.
/// Returns the organisation whose keys were checked, or `None` while the store holds no
/// provider-held keys.
pub fn check_kek(keks: &KekRing, view: &StateView) -> Result<Option<HpiO>, KeystoreError> {
    let (sets, _) = view.wrapped_key_sets(KEK_CHECK_KEYS_SCANNED_MAX, 1)?;
    let Some((org, key_id, wrapped)) = sets.into_iter().next() else {
        return Ok(None);
    };
    match keks.unwrap(&org, &key_id, &wrapped) {
        Ok(keys) => {
            drop(keys);
            Ok(Some(org))
        }
        Err(source) => Err(KeystoreError::Unwrap {
            org,
            key_id,
            source: Box::new(source),
        }),
    }
}

/// Previous KEKs a node may hold besides the current one, at most (during a rotation).
pub const PREVIOUS_KEKS_MAX: usize = 4;

/// The provider's current KEK, which wraps every new key set, and the previous ones a node
/// still holds while a rotation re-wraps the key sets they wrapped.
pub struct KekRing {
    pub current: Kek,
    pub previous: Vec<Kek>,
}

impl KekRing {
    /// The KEK a wrapped blob names, among those held; the current one when none matches
    /// (its unwrap then names both ids).
    pub fn for_blob(&self, wrapped: &[u8]) -> &Kek {
        let named = sealpost_crypto::kek::wrapped_by(wrapped);
        self.previous
            .iter()
            .find(|k| named.as_deref() == Some(k.id_hex().as_str()))
            .unwrap_or(&self.current)
    }

    /// Unwraps `wrapped` with the KEK it names.
    pub fn unwrap(
        &self,
        org: &HpiO,
        key_id: &str,
        wrapped: &[u8],
    ) -> Result<OrgKeys, sealpost_crypto::Error> {
        self.for_blob(wrapped).unwrap(org, key_id, wrapped)
    }
}

/// Unwrapped key sets by (organisation, key id).
type KeyCache = HashMap<(HpiO, String), Arc<OrgKeys>>;

/// Unwrapped organisation keys, on demand. Cheap to clone.
#[derive(Clone)]
pub struct Keystore {
    keks: Arc<KekRing>,
    view: StateView,
    cache: Arc<Mutex<KeyCache>>,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystore")
            .field("kek", &self.keks.current.id_hex())
            .finish_non_exhaustive()
    }
}

impl Keystore {
    pub fn new(keks: KekRing, view: StateView) -> Self {
        Self {
            keks: Arc::new(keks),
            view,
            cache: Arc::default(),
        }
    }

    /// The current KEK: it wraps every new key set.
    pub fn kek(&self) -> &Kek {
        &self.keks.current
    }

    /// Every KEK this node holds.
    pub fn keks(&self) -> &KekRing {
        &self.keks
    }

    /// The private keys of `org` named `key_id`.
    pub fn keys(&self, org: &HpiO, key_id: &str) -> Result<Arc<OrgKeys>, KeystoreError> {
        let k = (org.clone(), key_id.to_string());
        if let Some(hit) = self
            .cache
            .lock()
            .expect("the keystore lock is never held across a panic")
            .get(&k)
        {
            return Ok(hit.clone());
        }
        let wrapped =
            self.view
                .wrapped_keys(org, key_id)?
                .ok_or_else(|| KeystoreError::Unknown {
                    org: org.clone(),
                    key_id: key_id.to_string(),
                })?;
        let keys = Arc::new(self.keks.unwrap(org, key_id, &wrapped).map_err(|source| {
            KeystoreError::Unwrap {
                org: org.clone(),
                key_id: key_id.to_string(),
                source: Box::new(source),
            }
        })?);
        let mut cache = self
            .cache
            .lock()
            .expect("the keystore lock is never held across a panic");
        if cache.len() >= KEYSTORE_CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(k, keys.clone());
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob opens with whichever held KEK it names; a blob naming a KEK not held is tried
    /// with the current one, whose error names both.
    #[test]
    fn each_blob_opens_with_the_kek_it_names() {
        let kek = || Kek::generate().expect("a KEK");
        let (old, new, lost) = (kek(), kek(), kek());
        let org = HpiO::from_serial(3);
        let keys = OrgKeys::generate("k1").expect("keys");
        let under = |k: &Kek| k.wrap(&org, &keys).expect("wrap");
        let (by_old, by_new, by_lost) = (under(&old), under(&new), under(&lost));
        let lost_id = lost.id_hex();
        let ring = KekRing {
            current: new,
            previous: vec![old],
        };
        for blob in [&by_old, &by_new] {
            let opened = ring.unwrap(&org, "k1", blob).expect("opens");
            assert_eq!(opened.public_keys(), keys.public_keys());
        }
        let err = ring
            .unwrap(&org, "k1", &by_lost)
            .expect_err("a KEK not held")
            .to_string();
        assert!(
            err.contains(&lost_id) && err.contains(&ring.current.id_hex()),
            "{err}"
        );
    }
}
