//! Authorization: who may call what, decided in one place. The caller's identity is the
//! subject its TLS client certificate names (`sealpost_crypto::tls::principal`): an
//! organisation, or the role operator, auditor or node. [`allowed`] is the policy table
//! (SECURITY.md prints it); services call [`Guard::check`] before any work, and
//! [`Guard::deny`] for refusals that depend on the data (organisation A asking for
//! organisation B's message). Every refusal is PermissionDenied, counted per identity and
//! action in memory, and a per-node worker writes the counts to the log as one
//! `AccessDenied` summary per period (`api.denial_summary_ms`), so a flood of denials costs
//! one event per period, not one per call. [`Guard::admit_send`] is the per-organisation
//! send rate (a token bucket per organisation on each node); its refusals are
//! ResourceExhausted and summarised the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sealpost_core::Outcome;
use sealpost_core::command::{Command, DENIAL_SUMMARY_ENTRIES_MAX, Proposal};
use sealpost_core::event::DenialCount;
use sealpost_core::ids::HpiO;
use sealpost_crypto::tls::{Role, Subject};
use sealpost_raft::RaftNode;
use tonic::{Request, Status};

/// What a call does, as far as authorization is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send a message as the caller's organisation.
    Send,
    /// List or follow the caller's own inboxes.
    ReadMail,
    /// Fetch a decrypted payload addressed to the caller.
    Fetch,
    /// Acknowledge a message addressed to the caller.
    Ack,
    /// A message's status and timeline (metadata, never the payload).
    Track,
    /// An organisation's sent messages (metadata).
    Outbox,
    /// Look up organisations and endpoints.
    DirectoryRead,
    /// Register organisations, publish and retire endpoints, rotate keys, import.
    DirectoryWrite,
    /// The cluster's status.
    Status,
    /// Membership, snapshots, dead letters, reprocessing.
    Administer,
    /// Replay, search, verify and prove the audit trail.
    Audit,
    /// The internal Raft service (votes, appends, snapshots, forwarded proposals).
    Raft,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::ReadMail => "read-mail",
            Action::Fetch => "fetch",
            Action::Ack => "ack",
            Action::Track => "track",
            Action::Outbox => "outbox",
            Action::DirectoryRead => "directory-read",
            Action::DirectoryWrite => "directory-write",
            Action::Status => "status",
            Action::Administer => "administer",
            Action::Audit => "audit",
            Action::Raft => "raft",
        }
    }

    /// Every action, for the policy table's tests and documentation.
    pub const ALL: [Action; 12] = [
        Action::Send,
        Action::ReadMail,
        Action::Fetch,
        Action::Ack,
        Action::Track,
        Action::Outbox,
        Action::DirectoryRead,
        Action::DirectoryWrite,
        Action::Status,
        Action::Administer,
        Action::Audit,
        Action::Raft,
    ];
}

/// The policy: may a caller whose certificate names `subject` do `action` at all? (Which
/// organisation's data it may touch is checked by the service against the data.)
/// Organisations handle their own mail and read the directory; operators administer the
/// cluster and the directory and may read the audit trail and message metadata; auditors
/// read the audit trail and message metadata; nodes speak Raft. No one but the addressed
/// organisation fetches a payload. A certificate naming no subject may do nothing.
pub fn allowed(subject: Option<&Subject>, action: Action) -> bool {
    use Action::*;
    let Some(subject) = subject else {
        return false;
    };
    match subject {
        Subject::Org(_) => matches!(
            action,
            Send | ReadMail | Fetch | Ack | Track | Outbox | DirectoryRead | Status
        ),
        Subject::Role(Role::Operator) => matches!(
            action,
            Track | Outbox | DirectoryRead | DirectoryWrite | Status | Administer | Audit
        ),
        Subject::Role(Role::Auditor) => {
            matches!(action, Track | Outbox | DirectoryRead | Status | Audit)
        }
        Subject::Role(Role::Node) => matches!(action, Raft | Status),
    }
}

/// Who is calling: an actor name for the log and the subject its certificate names.
#[derive(Clone, Debug)]
pub struct Caller {
    pub actor: String,
    pub subject: Option<Subject>,
    /// The certificate's fingerprint (first 16 hex digits), or `anonymous`.
    pub identity: String,
}

impl Caller {
    /// Identifies the caller from its TLS client certificate; `node` is the node that took
    /// the call (part of the actor name events record).
    pub fn of<T>(req: &Request<T>, node: u64) -> Caller {
        let certs = req.peer_certs();
        match certs.as_ref().and_then(|c| c.first()) {
            Some(der) => {
                let fp = sealpost_crypto::tls::fingerprint(der.as_ref());
                let identity = format!("cert:{}", &fp[..16]);
                Caller {
                    actor: format!("{identity}@node-{node}"),
                    subject: subject_of(&fp, der.as_ref()),
                    identity,
                }
            }
            None => Caller {
                actor: format!("anonymous@node-{node}"),
                subject: None,
                identity: "anonymous".into(),
            },
        }
    }

    /// The organisation the caller acts for, if it is one.
    pub fn org(&self) -> Option<&HpiO> {
        match &self.subject {
            Some(Subject::Org(org)) => Some(org),
            _ => None,
        }
    }

    /// The subject as denial summaries name it.
    pub fn subject_text(&self) -> String {
        match &self.subject {
            Some(s) => s.to_string(),
            None => "nobody (the certificate names no organisation or role)".into(),
        }
    }
}

/// Most certificates whose subject [`Caller::of`] remembers (by fingerprint) in this
/// process; past it the memory is cleared. Parsing a certificate on every call cost a
/// noticeable share of a busy node's CPU; its fingerprint is computed anyway.
pub const SUBJECT_CACHE_ENTRIES_MAX: usize = 4096;

/// The subject a (TLS-verified) certificate names, parsed once per certificate.
fn subject_of(fingerprint: &str, der: &[u8]) -> Option<Subject> {
    type Cache = Mutex<HashMap<String, Option<Subject>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    if let Some(hit) = lock(cache).get(fingerprint) {
        return hit.clone();
    }
    let subject = sealpost_crypto::tls::principal(der);
    let mut c = lock(cache);
    if c.len() >= SUBJECT_CACHE_ENTRIES_MAX {
        c.clear();
    }
    c.insert(fingerprint.to_string(), subject.clone());
    subject
}

/// Most organisations with a send-rate bucket on one node; past it, full buckets (which
/// behave as absent ones) are dropped.
pub const RATE_BUCKETS_MAX: usize = 65_536;

/// Per-organisation send rate on one node: `sends_per_s` sustained, `burst` at once.
/// Zero `sends_per_s` turns the limit off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub sends_per_s: u32,
    pub burst: u32,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The action denial summaries name for sends refused by the rate limit.
pub const RATE_LIMITED_ACTION: &str = "send-over-rate";

/// The node's authorization state: denial counts awaiting their summary, and the
/// send-rate buckets.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

struct Inner {
    node: u64,
    rate: RateLimit,
    buckets: Mutex<HashMap<HpiO, Bucket>>,
    pending: Mutex<Pending>,
    denied_total: AtomicU64,
    rate_limited_total: AtomicU64,
}

#[derive(Default)]
struct Pending {
    since_ms: u64,
    counts: HashMap<(String, String, String), u64>,
}

/// The identity an overflowing summary folds its surplus entries into.
const OTHERS: &str = "others";

impl Pending {
    /// Adds `n` refusals under `key`; past the cap, everyone new shares one entry, so a
    /// summary stays bounded and loses no count.
    fn add(&mut self, key: (String, String, String), n: u64) {
        let key = if self.counts.len() >= DENIAL_SUMMARY_ENTRIES_MAX - 1
            && !self.counts.contains_key(&key)
        {
            (OTHERS.into(), "several".into(), "several".into())
        } else {
            key
        };
        *self.counts.entry(key).or_default() += n;
    }
}

/// A counter map's lock; a panic elsewhere while holding it leaves counts, still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Guard {
    pub fn new(node: u64, rate: RateLimit) -> Self {
        Self {
            inner: Arc::new(Inner {
                node,
                rate,
                buckets: Mutex::new(HashMap::new()),
                pending: Mutex::new(Pending {
                    since_ms: now_ms(),
                    counts: HashMap::new(),
                }),
                denied_total: AtomicU64::new(0),
                rate_limited_total: AtomicU64::new(0),
            }),
        }
    }

    /// Refuses (and records) a caller whose certificate does not allow `action`.
    pub fn check(&self, caller: &Caller, action: Action) -> Result<(), Status> {
        if allowed(caller.subject.as_ref(), action) {
            return Ok(());
        }
        Err(self.deny(
            caller,
            action,
            format!(
                "{} is not allowed to {}",
                caller.subject_text(),
                describe(action)
            ),
        ))
    }

    /// Records a refusal of `action` to `caller` and returns the PermissionDenied status
    /// that tells it `why`.
    pub fn deny(&self, caller: &Caller, action: Action, why: String) -> Status {
        self.inner.denied_total.fetch_add(1, Ordering::Relaxed);
        self.count(&caller.identity, caller.subject_text(), action.as_str());
        Status::permission_denied(why)
    }

    fn count(&self, identity: &str, subject: String, action: &str) {
        lock(&self.inner.pending).add((identity.to_string(), subject, action.to_string()), 1);
    }

    /// Takes one send token of `org`'s bucket, or refuses with ResourceExhausted (counted
    /// into the denial summary).
    pub fn admit_send(&self, caller: &Caller, org: &HpiO) -> Result<(), Status> {
        let RateLimit { sends_per_s, burst } = self.inner.rate;
        if sends_per_s == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let admitted = {
            let mut buckets = lock(&self.inner.buckets);
            if buckets.len() >= RATE_BUCKETS_MAX && !buckets.contains_key(org) {
                let rate = f64::from(sends_per_s);
                let cap = f64::from(burst);
                buckets
                    .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < cap);
            }
            let b = buckets.entry(org.clone()).or_insert(Bucket {
                tokens: f64::from(burst),
                at: now,
            });
            let refill = now.duration_since(b.at).as_secs_f64() * f64::from(sends_per_s);
            b.tokens = (b.tokens + refill).min(f64::from(burst));
            b.at = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                true
            } else {
                false
            }
        };
        if admitted {
            return Ok(());
        }
        self.inner
            .rate_limited_total
            .fetch_add(1, Ordering::Relaxed);
        self.count(&caller.identity, caller.subject_text(), RATE_LIMITED_ACTION);
        Err(Status::resource_exhausted(format!(
            "organisation {org} is over its send rate of {sends_per_s} messages a second \
             (bursts of {burst}) on this node; retry later"
        )))
    }

    /// Calls refused for lack of permission since the node started.
    pub fn denied_total(&self) -> u64 {
        self.inner.denied_total.load(Ordering::Relaxed)
    }

    /// Sends refused by the rate limit since the node started.
    pub fn rate_limited_total(&self) -> u64 {
        self.inner.rate_limited_total.load(Ordering::Relaxed)
    }

    /// The counts gathered since the last summary, as a summary command (none when
    /// nothing was refused); the counts are taken.
    fn take_summary(&self) -> Option<Command> {
        let mut p = lock(&self.inner.pending);
        if p.counts.is_empty() {
            return None;
        }
        let until_ms = now_ms().max(p.since_ms);
        let mut denials: Vec<DenialCount> = p
            .counts
            .drain()
            .map(|((identity, subject, action), count)| DenialCount {
                identity,
                subject: clip(subject),
                action,
                count,
            })
            .collect();
        denials.sort_by(|a, b| (&a.identity, &a.action).cmp(&(&b.identity, &b.action)));
        let from_ms = std::mem::replace(&mut p.since_ms, until_ms);
        Some(Command::RecordDenials {
            node: self.inner.node,
            from_ms,
            until_ms,
            denials,
        })
    }

    /// Puts back the counts of a summary that could not be written, to go out with the
    /// next one.
    fn restore(&self, cmd: Command) {
        let Command::RecordDenials {
            from_ms, denials, ..
        } = cmd
        else {
            return;
        };
        let mut p = lock(&self.inner.pending);
        p.since_ms = p.since_ms.min(from_ms);
        for d in denials {
            p.add((d.identity, d.subject, d.action), d.count);
        }
    }

    /// Writes the pending denial counts to the log now: `Ok(true)` when a summary was
    /// committed, `Ok(false)` when there was nothing to write.
    pub async fn flush(&self, raft: &RaftNode) -> Result<bool, Status> {
        let Some(command) = self.take_summary() else {
            return Ok(false);
        };
        let proposal = Proposal {
            actor: format!("node-{}", self.inner.node),
            command: command.clone(),
        };
        let outcome = match proposal.validate() {
            Ok(()) => raft
                .propose(proposal)
                .await
                .map_err(crate::convert::propose_error),
            Err(rej) => Err(crate::convert::rejection(rej)),
        };
        match outcome {
            Ok(c) => match c.outcome {
                Outcome::Applied { .. } => Ok(true),
                // A store whose cluster version predates the event: nothing to retry.
                Outcome::Rejected(r) => Err(crate::convert::rejection(r)),
            },
            Err(e) => {
                self.restore(command);
                Err(e)
            }
        }
    }

    /// Writes a summary every `every` while there are denials to summarise, until
    /// `shutdown` turns true.
    pub fn spawn_summariser(
        &self,
        raft: RaftNode,
        every: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        crate::spawn_every(every, shutdown, move || {
            let (me, raft) = (me.clone(), raft.clone());
            async move {
                if let Err(e) = me.flush(&raft).await {
                    tracing::warn!(error = %e.message(), "recording a denial summary failed; the counts go out with the next one");
                }
            }
        })
    }
}

fn clip(mut s: String) -> String {
    let max = sealpost_core::command::DENIAL_TEXT_BYTES_MAX;
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn describe(action: Action) -> &'static str {
    match action {
        Action::Send => "send messages (use an organisation's certificate)",
        Action::ReadMail => "read inboxes (use an organisation's certificate)",
        Action::Fetch => "fetch message payloads (only the addressed organisation may)",
        Action::Ack => "acknowledge messages (only the addressed organisation may)",
        Action::Track => "track messages",
        Action::Outbox => "list outboxes",
        Action::DirectoryRead => "read the directory",
        Action::DirectoryWrite => "write the directory (operators only)",
        Action::Status => "read the cluster status",
        Action::Administer => "administer the cluster (operators only)",
        Action::Audit => "read the audit trail (operators and auditors only)",
        Action::Raft => "call the Raft service (nodes only)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(subject: Option<Subject>) -> Caller {
        Caller {
            actor: "cert:test@node-1".into(),
            subject,
            identity: "cert:test".into(),
        }
    }

    #[test]
    fn the_policy_table_gives_each_subject_its_own_actions_only() {
        // The table as SECURITY.md states it, written out independently of `allowed`.
        let table = [
            (
                Some(Subject::Org(HpiO::from_serial(1))),
                "send read-mail fetch ack track outbox directory-read status",
            ),
            (
                Some(Subject::Role(Role::Operator)),
                "track outbox directory-read directory-write status administer audit",
            ),
            (
                Some(Subject::Role(Role::Auditor)),
                "track outbox directory-read status audit",
            ),
            (Some(Subject::Role(Role::Node)), "raft status"),
            (None, ""),
        ];
        for (subject, may) in table {
            let may: Vec<&str> = may.split_whitespace().collect();
            for action in Action::ALL {
                assert_eq!(
                    allowed(subject.as_ref(), action),
                    may.contains(&action.as_str()),
                    "{subject:?} {action:?}"
                );
            }
        }
        // The payload is the addressed organisation's alone.
        for role in [Role::Operator, Role::Auditor, Role::Node] {
            assert!(!allowed(Some(&Subject::Role(role)), Action::Fetch));
        }
    }

    #[test]
    fn denials_are_counted_per_identity_and_action_and_bounded() {
        let g = Guard::new(
            1,
            RateLimit {
                sends_per_s: 0,
                burst: 0,
            },
        );
        let auditor = caller(Some(Subject::Role(Role::Auditor)));
        for _ in 0..5 {
            assert_eq!(
                g.check(&auditor, Action::Fetch).expect_err("denied").code(),
                tonic::Code::PermissionDenied
            );
        }
        g.check(&auditor, Action::Audit).expect("allowed");
        let Some(Command::RecordDenials { denials, .. }) = g.take_summary() else {
            panic!("a summary");
        };
        assert_eq!(denials.len(), 1);
        assert_eq!(denials[0].count, 5);
        assert_eq!(denials[0].action, "fetch");
        assert_eq!(denials[0].subject, "auditor");
        assert!(g.take_summary().is_none(), "the counts were taken");
        // Many identities: the summary stays within its cap and loses no count.
        for i in 0..(DENIAL_SUMMARY_ENTRIES_MAX * 2) {
            let mut c = caller(None);
            c.identity = format!("cert:{i}");
            let _ = g.check(&c, Action::Send);
        }
        let Some(cmd) = g.take_summary() else {
            panic!("a summary");
        };
        let proposal = Proposal {
            actor: "node-1".into(),
            command: cmd.clone(),
        };
        proposal.validate().expect("a valid summary");
        let Command::RecordDenials { denials, .. } = cmd else {
            panic!("a summary");
        };
        assert!(denials.len() <= DENIAL_SUMMARY_ENTRIES_MAX);
        assert_eq!(
            denials.iter().map(|d| d.count).sum::<u64>(),
            (DENIAL_SUMMARY_ENTRIES_MAX * 2) as u64
        );
        assert_eq!(
            g.denied_total(),
            5 + (DENIAL_SUMMARY_ENTRIES_MAX * 2) as u64
        );
    }

    #[test]
    fn a_flooding_organisation_is_held_to_its_burst_and_others_are_not() {
        let g = Guard::new(
            1,
            RateLimit {
                sends_per_s: 1,
                burst: 10,
            },
        );
        let a = HpiO::from_serial(1);
        let b = HpiO::from_serial(2);
        let ca = caller(Some(Subject::Org(a.clone())));
        let cb = caller(Some(Subject::Org(b.clone())));
        let admitted_a = (0..1000).filter(|_| g.admit_send(&ca, &a).is_ok()).count();
        // At one token a second, the test's own run time adds at most a few.
        assert!((10..=12).contains(&admitted_a), "{admitted_a}");
        for _ in 0..10 {
            g.admit_send(&cb, &b).expect("b has its own bucket");
        }
        assert_eq!(g.rate_limited_total(), 1000 - admitted_a as u64);
    }
}
