//! The `Directory` gRPC service: registering organisations, publishing and retiring
//! endpoints, rotating keys, and reading the directory. Only operators write it; anyone
//! with a certificate naming an organisation or a role other than node reads it.
//!
//! Consistency: writes answer once committed by a quorum and applied on the leader. Reads
//! are linearizable by default (a read index from the leader, served once this node has
//! applied it) or local when the request asks for `CONSISTENCY_LOCAL`.

use sealpost_core::Outcome;
use sealpost_core::command::{Command, Proposal};
use sealpost_core::ids::HpiO;
use sealpost_proto::v1 as pb;
use sealpost_proto::v1::directory_server::Directory;
use sealpost_raft::RaftNode;
use sealpost_store::SearchQuery;
use tonic::{Request, Response, Status};

use crate::authz::{Action, Caller, Guard};
use crate::convert::{self, field_error, id_error};
use crate::keystore::Keystore;

/// The `sealpost.v1.Directory` service of one node.
#[derive(Clone)]
pub struct DirectoryService {
    node: RaftNode,
    keystore: Keystore,
    guard: Guard,
}

/// Key id of the first key set the provider generates for an organisation.
pub const PROVISIONED_KEY_ID: &str = "k1";

/// Most provider-generated rotations of one organisation's keys (`k2` ..).
pub const ROTATIONS_MAX: u32 = 1_000;

impl DirectoryService {
    pub fn new(node: RaftNode, keystore: Keystore, guard: Guard) -> Self {
        Self {
            node,
            keystore,
            guard,
        }
    }

    /// Refuses (and records) a caller not allowed `action`; returns its actor name.
    fn allow<T>(&self, req: &Request<T>, action: Action) -> Result<String, Status> {
        let caller = Caller::of(req, self.node.id());
        self.guard.check(&caller, action)?;
        Ok(caller.actor)
    }

    async fn write(
        &self,
        actor: String,
        command: Command,
    ) -> Result<Response<pb::WriteResult>, Status> {
        let proposal = Proposal { actor, command };
        // Refuse bad input before it reaches the log.
        proposal.validate().map_err(convert::rejection)?;
        let committed = self
            .node
            .propose(proposal)
            .await
            .map_err(convert::propose_error)?;
        match committed.outcome {
            Outcome::Applied { first_seq, count } => Ok(Response::new(pb::WriteResult {
                first_seq,
                event_count: count,
                log_index: committed.log_index,
            })),
            Outcome::Rejected(r) => Err(convert::rejection(r)),
        }
    }

    async fn read_barrier(&self, consistency: i32) -> Result<(), Status> {
        match pb::Consistency::try_from(consistency) {
            Ok(pb::Consistency::Local) => Ok(()),
            Ok(pb::Consistency::Linearizable) => self
                .node
                .linearizable_barrier()
                .await
                .map_err(convert::node_error),
            Err(_) => Err(Status::invalid_argument(format!(
                "consistency: unknown value {consistency}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Directory for DirectoryService {
    #[tracing::instrument(skip_all, fields(node = self.node.id()))]
    async fn register_organisation(
        &self,
        req: Request<pb::RegisterOrganisationRequest>,
    ) -> Result<Response<pb::WriteResult>, Status> {
        let actor = self.allow(&req, Action::DirectoryWrite)?;
        let org = req
            .into_inner()
            .organisation
            .ok_or_else(|| Status::invalid_argument("organisation: required"))?;
        if org.keys.is_some() {
            // The organisation holds its own private keys: the provider can seal to it and
            // verify it, but cannot open or sign for it.
            let spec = convert::organisation_spec(org, None)?;
            return self.write(actor, Command::RegisterOrganisation(spec)).await;
        }
        // The provider generates the keys and keeps the private halves wrapped under its
        // key-encryption key; only the wrapped blob enters the log.
        let keys = sealpost_crypto::keys::OrgKeys::generate(PROVISIONED_KEY_ID)
            .map_err(|e| Status::internal(format!("key generation failed: {e}")))?;
        let spec = convert::organisation_spec(org, Some(keys.public_keys()))?;
        let wrapped = self
            .keystore
            .kek()
            .wrap(&spec.hpio, &keys)
            .map_err(|e| Status::internal(format!("wrapping keys failed: {e}")))?;
        self.write(actor, Command::ProvisionOrganisation { spec, wrapped })
            .await
    }

    #[tracing::instrument(skip_all, fields(node = self.node.id()))]
    async fn publish_endpoint(
        &self,
        req: Request<pb::PublishEndpointRequest>,
    ) -> Result<Response<pb::WriteResult>, Status> {
        let actor = self.allow(&req, Action::DirectoryWrite)?;
        let spec = convert::endpoint_spec(req.into_inner())?;
        self.write(actor, Command::PublishEndpoint(spec)).await
    }

    #[tracing::instrument(skip_all, fields(node = self.node.id()))]
    async fn retire_endpoint(
        &self,
        req: Request<pb::RetireEndpointRequest>,
    ) -> Result<Response<pb::WriteResult>, Status> {
        let actor = self.allow(&req, Action::DirectoryWrite)?;
        let r = req.into_inner();
        let id = convert::endpoint_id("id", &r.id)?;
        self.write(
            actor,
            Command::RetireEndpoint {
                id,
                reason: r.reason,
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(node = self.node.id()))]
    async fn rotate_keys(
        &self,
        req: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::WriteResult>, Status> {
        let actor = self.allow(&req, Action::DirectoryWrite)?;
        let r = req.into_inner();
        let org = HpiO::parse(&r.hpio).map_err(|e| id_error("hpio", e))?;
        if r.keys.is_some() {
            let keys = convert::keys_from_pb(r.keys)?;
            keys.validate().map_err(field_error)?;
            return self.write(actor, Command::RotateKeys { org, keys }).await;
        }
        // The provider rotates keys it holds: a fresh pair under a key id never used by
        // this organisation, so no earlier wrapped key is ever replaced.
        self.node
            .linearizable_barrier()
            .await
            .map_err(convert::node_error)?;
        let view = self.node.view();
        let current = view
            .organisation(&org)
            .map_err(convert::store_error)?
            .ok_or_else(|| Status::not_found(format!("organisation {org} is not registered")))?;
        if view
            .wrapped_keys(&org, &current.spec.keys.key_id)
            .map_err(convert::store_error)?
            .is_none()
        {
            return Err(Status::failed_precondition(format!(
                "organisation {org} holds its own private keys; rotate by sending the public \
                 halves of its new key pair"
            )));
        }
        let mut key_id = None;
        for n in 2..=ROTATIONS_MAX + 1 {
            let candidate = format!("k{n}");
            if view
                .published_keys(&org, &candidate)
                .map_err(convert::store_error)?
                .is_none()
                && view
                    .wrapped_keys(&org, &candidate)
                    .map_err(convert::store_error)?
                    .is_none()
            {
                key_id = Some(candidate);
                break;
            }
        }
        let key_id = key_id.ok_or_else(|| {
            Status::resource_exhausted(format!(
                "organisation {org} has rotated its keys {ROTATIONS_MAX} times, the limit"
            ))
        })?;
        let keys = sealpost_crypto::keys::OrgKeys::generate(&key_id)
            .map_err(|e| Status::internal(format!("key generation failed: {e}")))?;
        let wrapped = self
            .keystore
            .kek()
            .wrap(&org, &keys)
            .map_err(|e| Status::internal(format!("wrapping keys failed: {e}")))?;
        self.write(
            actor,
            Command::ProvisionKeys {
                org,
                keys: keys.public_keys(),
                wrapped,
            },
        )
        .await
    }

    async fn get_organisation(
        &self,
        req: Request<pb::GetOrganisationRequest>,
    ) -> Result<Response<pb::Organisation>, Status> {
        self.allow(&req, Action::DirectoryRead)?;
        let r = req.into_inner();
        let id = HpiO::parse(&r.hpio).map_err(|e| id_error("hpio", e))?;
        self.read_barrier(r.consistency).await?;
        let org = self
            .node
            .view()
            .organisation(&id)
            .map_err(convert::store_error)?
            .ok_or_else(|| Status::not_found(format!("organisation {id} is not registered")))?;
        Ok(Response::new(convert::organisation_to_pb(&org)))
    }

    async fn get_endpoint(
        &self,
        req: Request<pb::GetEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        self.allow(&req, Action::DirectoryRead)?;
        let r = req.into_inner();
        let id = convert::endpoint_id("id", &r.id)?;
        self.read_barrier(r.consistency).await?;
        let view = self.node.view();
        let ep = view
            .endpoint(&id)
            .map_err(convert::store_error)?
            .ok_or_else(|| Status::not_found(format!("endpoint {id} is not published")))?;
        let org = view.organisation(&id.org).map_err(convert::store_error)?;
        Ok(Response::new(convert::endpoint_to_pb(&ep, org.as_ref())))
    }

    async fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        self.allow(&req, Action::DirectoryRead)?;
        let r = req.into_inner();
        let nonempty = |s: String| (!s.trim().is_empty()).then_some(s);
        let q = SearchQuery {
            text: r.text,
            specialty: nonempty(r.specialty),
            state: nonempty(r.state)
                .map(|s| s.parse().map_err(field_error))
                .transpose()?,
            suburb: nonempty(r.suburb),
            payload_type: nonempty(r.payload_type)
                .map(|s| convert::payload_type(&s))
                .transpose()?,
            include_retired: r.include_retired,
            limit: r.limit as usize,
        };
        if q.text.len() > sealpost_core::directory::NAME_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "text: is {} bytes, the limit is {} bytes",
                q.text.len(),
                sealpost_core::directory::NAME_BYTES_MAX
            )));
        }
        self.read_barrier(r.consistency).await?;
        let hits = self.node.view().search(&q).map_err(convert::store_error)?;
        Ok(Response::new(pb::SearchResponse {
            endpoints: hits
                .iter()
                .map(|h| convert::endpoint_to_pb(&h.endpoint, Some(&h.organisation)))
                .collect(),
        }))
    }
}
