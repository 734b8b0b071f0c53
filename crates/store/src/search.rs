//! Directory search over the index column family: pick the most selective criterion, scan
//! its index prefix, then filter candidates on every criterion. Scans and results are
//! bounded.

use std::collections::BTreeSet;

use rocksdb::{Direction, IteratorMode};
use sealpost_core::directory::{AuState, Endpoint, Organisation, PayloadType};
use sealpost_core::ids::{EndpointId, EndpointLocal, HpiI, HpiO, IDENTIFIER_DIGITS};
use sealpost_core::view::{index, index_key_endpoint, index_prefix, location_value, name_words};

use crate::error::Result;
use crate::rocks::{self, rocks_err};
use crate::state_machine::{CF_ENDPOINTS, CF_INDEX, CF_ORGS, SmDb};

/// Most results one search returns.
pub const SEARCH_RESULTS_MAX: usize = 200;
/// Most index keys one search scans before it stops.
pub const SEARCH_SCAN_KEYS_MAX: usize = 20_000;

/// What to look for. Empty criteria match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// Words of a name (each must prefix a word of the endpoint's or organisation's
    /// name), or an HPI-O / HPI-I.
    pub text: String,
    pub specialty: Option<String>,
    pub state: Option<AuState>,
    pub suburb: Option<String>,
    pub payload_type: Option<PayloadType>,
    pub include_retired: bool,
    /// At most this many results (capped at [`SEARCH_RESULTS_MAX`]; 0 means the cap).
    pub limit: usize,
}

/// One search result: the endpoint and the organisation it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchHit {
    pub endpoint: Endpoint,
    pub organisation: Organisation,
}

enum Ident {
    Org(HpiO),
    Practitioner(HpiI),
}

fn as_identifier(text: &str) -> Option<Ident> {
    let t = text.trim();
    if t.len() != IDENTIFIER_DIGITS {
        return None;
    }
    HpiO::parse(t)
        .map(Ident::Org)
        .ok()
        .or_else(|| HpiI::parse(t).map(Ident::Practitioner).ok())
}

fn matches(q: &SearchQuery, words: &[String], ident: &Option<Ident>, hit: &SearchHit) -> bool {
    let ep = &hit.endpoint.spec;
    let org = &hit.organisation.spec;
    if !q.include_retired && !hit.endpoint.is_active() {
        return false;
    }
    match ident {
        Some(Ident::Org(o)) if &ep.id.org != o => return false,
        Some(Ident::Practitioner(p)) if !matches!(&ep.id.local, EndpointLocal::Practitioner(x) if x == p) =>
        {
            return false;
        }
        Some(_) => {}
        None => {
            let have: Vec<String> = name_words(&ep.display_name)
                .chain(name_words(&org.name))
                .collect();
            if !words
                .iter()
                .all(|w| have.iter().any(|h| h.starts_with(w.as_str())))
            {
                return false;
            }
        }
    }
    let specialty_ok = q
        .specialty
        .as_ref()
        .is_none_or(|s| ep.specialty.trim().eq_ignore_ascii_case(s.trim()));
    let state_ok = q.state.is_none_or(|st| org.state == st);
    let suburb_ok = q
        .suburb
        .as_ref()
        .is_none_or(|sub| org.suburb.trim().eq_ignore_ascii_case(sub.trim()));
    let payload_ok = q.payload_type.is_none_or(|p| ep.payload_types.contains(&p));
    specialty_ok && state_ok && suburb_ok && payload_ok
}

pub(crate) fn search(live: &SmDb, q: &SearchQuery) -> Result<Vec<SearchHit>> {
    let limit = if q.limit == 0 {
        SEARCH_RESULTS_MAX
    } else {
        q.limit.min(SEARCH_RESULTS_MAX)
    };
    let ident = as_identifier(&q.text);
    let words: Vec<String> = if ident.is_some() {
        vec![]
    } else {
        name_words(&q.text).collect()
    };
    // The scan prefix: the most selective criterion available. Name words scan a word
    // prefix, so the prefix has no separator after it.
    let prefix: Vec<u8> = match (
        &ident,
        words.first(),
        &q.specialty,
        &q.state,
        q.payload_type,
    ) {
        (Some(Ident::Org(o)), ..) => index_prefix(index::ORGANISATION, o.as_str()),
        (Some(Ident::Practitioner(p)), ..) => index_prefix(index::PRACTITIONER, p.as_str()),
        (None, Some(w), ..) => {
            let mut k = vec![index::NAME_WORD];
            k.extend_from_slice(w.as_bytes());
            k
        }
        (None, None, Some(s), ..) => index_prefix(index::SPECIALTY, &s.trim().to_lowercase()),
        (None, None, None, Some(st), _) => match &q.suburb {
            Some(sub) => index_prefix(index::LOCATION, &location_value(st.as_str(), sub)),
            None => {
                let mut k = vec![index::LOCATION];
                k.extend_from_slice(st.as_str().as_bytes());
                k.push(1);
                k
            }
        },
        (None, None, None, None, Some(p)) => index_prefix(index::PAYLOAD_TYPE, p.as_str()),
        // No criterion: every endpoint, through the organisation index.
        _ => vec![index::ORGANISATION],
    };
    let cf = rocks::cf(&live.db, CF_INDEX);
    let mut seen = BTreeSet::<EndpointId>::new();
    let mut out = Vec::new();
    for item in live
        .db
        .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
        .take(SEARCH_SCAN_KEYS_MAX)
    {
        let (k, _) = item.map_err(rocks_err(&live.path))?;
        if !k.starts_with(&prefix) {
            break;
        }
        let Some(id) = index_key_endpoint(&k) else {
            continue;
        };
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(endpoint) = live.get::<Endpoint>(CF_ENDPOINTS, id.text().as_bytes())? else {
            continue;
        };
        let Some(organisation) = live.get::<Organisation>(CF_ORGS, id.org.as_str().as_bytes())?
        else {
            continue;
        };
        let hit = SearchHit {
            endpoint,
            organisation,
        };
        if matches(q, &words, &ident, &hit) {
            out.push(hit);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}
