//! Commands: what clients ask for, validated at the edge and decided at apply time.
//!
//! A command is first checked without state ([`Command::validate`]) where the request
//! arrives, so bad input never reaches the log. The authoritative decision
//! ([`decide`]) runs deterministically on every replica when the log entry is applied,
//! against the facts the command declared it reads ([`Command::reads`]); it yields events
//! or a [`Rejection`], and a rejection writes nothing.

use serde::{Deserialize, Serialize};

use crate::directory::{
    EndpointSpec, FieldError, NOTE_BYTES_MAX, OrganisationSpec, PublicKeys, check_text,
};
use crate::event::{EVENT_VERSION_CURRENT, Event};
use crate::ids::{EndpointId, HpiO};
use crate::view::Facts;

/// Longest actor name carried with a command, in bytes.
pub const ACTOR_BYTES_MAX: usize = 128;

/// What a client asks the cluster to do.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Command {
    RegisterOrganisation(OrganisationSpec),
    PublishEndpoint(EndpointSpec),
    RetireEndpoint { id: EndpointId, reason: String },
    RotateKeys { org: HpiO, keys: PublicKeys },
}

/// A command with the identity of whoever asked for it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Proposal {
    pub actor: String,
    pub command: Command,
}

/// Why a command was refused. Each maps to one gRPC status code at the edge.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
}

impl From<FieldError> for Rejection {
    fn from(e: FieldError) -> Self {
        Rejection::InvalidArgument(e.to_string())
    }
}

/// The keys a command reads, so the store can load exactly those facts before deciding.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Reads {
    pub organisations: Vec<HpiO>,
    pub endpoints: Vec<EndpointId>,
}

impl Command {
    /// Stateless validation: sizes and shapes. Runs at the edge and again at apply.
    pub fn validate(&self) -> Result<(), Rejection> {
        match self {
            Command::RegisterOrganisation(o) => o.validate()?,
            Command::PublishEndpoint(e) => e.validate()?,
            Command::RetireEndpoint { reason, .. } => check_text("reason", reason, NOTE_BYTES_MAX)?,
            Command::RotateKeys { keys, .. } => keys.validate()?,
        }
        Ok(())
    }

    pub fn reads(&self) -> Reads {
        match self {
            Command::RegisterOrganisation(o) => Reads {
                organisations: vec![o.hpio.clone()],
                endpoints: vec![],
            },
            Command::PublishEndpoint(e) => Reads {
                organisations: vec![e.id.org.clone()],
                endpoints: vec![e.id.clone()],
            },
            Command::RetireEndpoint { id, .. } => Reads {
                organisations: vec![],
                endpoints: vec![id.clone()],
            },
            Command::RotateKeys { org, .. } => Reads {
                organisations: vec![org.clone()],
                endpoints: vec![],
            },
        }
    }

    /// A short name for logs and metrics; never includes field values.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterOrganisation(_) => "register_organisation",
            Command::PublishEndpoint(_) => "publish_endpoint",
            Command::RetireEndpoint { .. } => "retire_endpoint",
            Command::RotateKeys { .. } => "rotate_keys",
        }
    }
}

impl Proposal {
    pub fn validate(&self) -> Result<(), Rejection> {
        check_text("actor", &self.actor, ACTOR_BYTES_MAX)?;
        self.command.validate()
    }
}

/// Decides a command against the current facts. Pure and deterministic: every replica
/// reaches the same answer for the same log entry. The caller has already run
/// [`Proposal::validate`] (the state machine does, once per proposal).
pub fn decide(cmd: &Command, facts: &Facts, cluster_version: u16) -> Result<Vec<Event>, Rejection> {
    let events = match cmd {
        Command::RegisterOrganisation(o) => {
            if facts.organisation(&o.hpio).is_some() {
                return Err(Rejection::AlreadyExists(format!(
                    "organisation {} is already registered",
                    o.hpio
                )));
            }
            vec![Event::OrganisationRegistered(o.clone())]
        }
        Command::PublishEndpoint(e) => {
            if facts.organisation(&e.id.org).is_none() {
                return Err(Rejection::NotFound(format!(
                    "organisation {} is not registered",
                    e.id.org
                )));
            }
            if facts.endpoint(&e.id).is_some_and(|ep| ep.is_active()) {
                return Err(Rejection::AlreadyExists(format!(
                    "endpoint {} is already published",
                    e.id
                )));
            }
            vec![Event::EndpointPublished(e.clone())]
        }
        Command::RetireEndpoint { id, reason } => match facts.endpoint(id) {
            None => {
                return Err(Rejection::NotFound(format!(
                    "endpoint {id} is not published"
                )));
            }
            Some(ep) if !ep.is_active() => {
                return Err(Rejection::FailedPrecondition(format!(
                    "endpoint {id} is already retired"
                )));
            }
            Some(_) => vec![Event::EndpointRetired {
                id: id.clone(),
                reason: reason.clone(),
            }],
        },
        Command::RotateKeys { org, keys } => match facts.organisation(org) {
            None => {
                return Err(Rejection::NotFound(format!(
                    "organisation {org} is not registered"
                )));
            }
            Some(o) if o.spec.keys.key_id == keys.key_id => {
                return Err(Rejection::AlreadyExists(format!(
                    "organisation {org} already uses key id {}",
                    keys.key_id
                )));
            }
            Some(_) => vec![Event::KeysRotated {
                org: org.clone(),
                keys: keys.clone(),
            }],
        },
    };
    // The cluster version gate: a variant newer than what every voter understands must not
    // enter the log, or an old follower would stop applying.
    let supported = cluster_version.min(EVENT_VERSION_CURRENT);
    if let Some(e) = events.iter().find(|e| e.introduced_in() > supported) {
        return Err(Rejection::FailedPrecondition(format!(
            "{} needs cluster version {}, the cluster runs {cluster_version}",
            e.kind(),
            e.introduced_in()
        )));
    }
    Ok(events)
}
