//! The provider keystore on one node: organisations' private keys, kept in the replicated
//! views only as blobs wrapped under the provider's key-encryption key (KEK), unwrapped on
//! first use with the KEK file this node was given and cached in memory (zeroized when
//! dropped). Any node can therefore seal and open for any organisation of its provider,
//! and the KEK itself never enters the log.

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

/// Checks that `kek` unwraps the provider-held keys in `view`: the first key set in key
/// order (every one is wrapped under the same KEK), unwrapped and dropped (zeroized) at
/// once. A node runs it before it serves, and a restore before it writes the Raft log, so
/// a node given another provider's KEK, or a stale one, stops with an error naming both
/// KEK ids instead of failing every send later. Returns the organisation whose keys were
/// checked, or `None` while the store holds no provider-held keys.
pub fn check_kek(kek: &Kek, view: &StateView) -> Result<Option<HpiO>, KeystoreError> {
    let Some((org, key_id, wrapped)) = view.first_wrapped_keys(KEK_CHECK_KEYS_SCANNED_MAX)? else {
        return Ok(None);
    };
    match kek.unwrap(&org, &key_id, &wrapped) {
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

/// Unwrapped key sets by (organisation, key id).
type KeyCache = HashMap<(HpiO, String), Arc<OrgKeys>>;

/// Unwrapped organisation keys, on demand. Cheap to clone.
#[derive(Clone)]
pub struct Keystore {
    kek: Arc<Kek>,
    view: StateView,
    cache: Arc<Mutex<KeyCache>>,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystore")
            .field("kek", &self.kek.id_hex())
            .finish_non_exhaustive()
    }
}

impl Keystore {
    pub fn new(kek: Kek, view: StateView) -> Self {
        Self {
            kek: Arc::new(kek),
            view,
            cache: Arc::default(),
        }
    }

    pub fn kek(&self) -> &Kek {
        &self.kek
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
        let keys = Arc::new(self.kek.unwrap(org, key_id, &wrapped).map_err(|source| {
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
