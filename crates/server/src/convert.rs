//! Conversions at the gRPC edge: protobuf messages to domain types (validating as they
//! go) and back, and domain errors to gRPC status codes. Nothing past this module sees
//! protobuf.

use sealpost_core::command::Rejection;
use sealpost_core::directory::{
    AuState, Endpoint, EndpointKind, EndpointSpec, FieldError, Organisation, OrganisationSpec,
    PayloadType, PublicKeys,
};
use sealpost_core::ids::{EndpointId, HpiO, IdError};
use sealpost_core::send_form::SendFormError;
use sealpost_proto::v1 as pb;
use sealpost_raft::{NodeError, ProposeError};
use tonic::Status;

pub fn id_error(field: &str, e: IdError) -> Status {
    Status::invalid_argument(format!("{field}: {e}"))
}

pub fn field_error(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A send's refused field: over the size limit is ResourceExhausted (stating the limit),
/// anything else InvalidArgument naming the field.
pub fn send_form_error(e: SendFormError) -> Status {
    match e {
        SendFormError::PayloadTooLarge { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

pub fn rejection(r: Rejection) -> Status {
    match r {
        Rejection::InvalidArgument(m) => Status::invalid_argument(m),
        Rejection::NotFound(m) => Status::not_found(m),
        Rejection::AlreadyExists(m) => Status::already_exists(m),
        Rejection::FailedPrecondition(m) => Status::failed_precondition(m),
    }
}

pub fn propose_error(e: ProposeError) -> Status {
    match e {
        ProposeError::Overloaded(_)
        | ProposeError::TooLarge { .. }
        | ProposeError::GroupTooLarge { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

pub fn node_error(e: NodeError) -> Status {
    match e {
        NodeError::Invalid(m) => Status::failed_precondition(m),
        NodeError::Unavailable(m) => Status::unavailable(m),
        NodeError::Storage(m) => Status::internal(m),
    }
}

pub fn store_error(e: sealpost_store::Error) -> Status {
    if let sealpost_store::Error::Invalid(m) = e {
        // A request the store cannot answer as asked (a size or range beyond it): the
        // caller's to fix, not a fault.
        return Status::invalid_argument(m);
    }
    tracing::error!(error = %e, "storage error while serving a request");
    Status::internal(format!("storage: {e}"))
}

pub fn keys_from_pb(k: Option<pb::PublicKeys>) -> Result<PublicKeys, Status> {
    let k = k.ok_or_else(|| Status::invalid_argument("keys: required"))?;
    Ok(PublicKeys {
        key_id: k.key_id,
        encryption: PublicKeys::key_from_slice("keys.encryption", &k.encryption)
            .map_err(field_error)?,
        signing: PublicKeys::key_from_slice("keys.signing", &k.signing).map_err(field_error)?,
    })
}

pub fn keys_to_pb(k: &PublicKeys) -> pb::PublicKeys {
    pb::PublicKeys {
        key_id: k.key_id.clone(),
        encryption: k.encryption.to_vec(),
        signing: k.signing.to_vec(),
    }
}

/// An organisation from the wire. Without keys, `provided` supplies them (the provider
/// generates keys for organisations it hosts).
pub fn organisation_spec(
    o: pb::Organisation,
    provided: Option<PublicKeys>,
) -> Result<OrganisationSpec, Status> {
    let keys = match (o.keys, provided) {
        (Some(k), _) => keys_from_pb(Some(k))?,
        (None, Some(k)) => k,
        (None, None) => return Err(Status::invalid_argument("keys: required")),
    };
    let spec = OrganisationSpec {
        hpio: HpiO::parse(&o.hpio).map_err(|e| id_error("hpio", e))?,
        name: o.name,
        suburb: o.suburb,
        state: o.state.parse::<AuState>().map_err(field_error)?,
        postcode: o.postcode,
        keys,
    };
    spec.validate().map_err(field_error)?;
    Ok(spec)
}

pub fn organisation_to_pb(o: &Organisation) -> pb::Organisation {
    pb::Organisation {
        hpio: o.spec.hpio.to_string(),
        name: o.spec.name.clone(),
        suburb: o.spec.suburb.clone(),
        state: o.spec.state.to_string(),
        postcode: o.spec.postcode.clone(),
        keys: Some(keys_to_pb(&o.spec.keys)),
        registered_seq: o.registered_seq,
        keys_seq: o.keys_seq,
    }
}

pub fn endpoint_id(field: &str, s: &str) -> Result<EndpointId, Status> {
    EndpointId::parse(s).map_err(|e| id_error(field, e))
}

pub fn payload_type(s: &str) -> Result<PayloadType, Status> {
    s.parse::<PayloadType>().map_err(field_error)
}

pub fn endpoint_spec(r: pb::PublishEndpointRequest) -> Result<EndpointSpec, Status> {
    let spec = EndpointSpec {
        id: endpoint_id("id", &r.id)?,
        display_name: r.display_name,
        specialty: r.specialty,
        payload_types: r
            .payload_types
            .iter()
            .map(|p| payload_type(p))
            .collect::<Result<_, _>>()?,
    };
    spec.validate().map_err(field_error)?;
    Ok(spec)
}

pub fn endpoint_to_pb(e: &Endpoint, org: Option<&Organisation>) -> pb::Endpoint {
    pb::Endpoint {
        id: e.spec.id.to_string(),
        kind: match e.spec.kind() {
            EndpointKind::Service => "service".into(),
            EndpointKind::Practitioner => "practitioner".into(),
        },
        display_name: e.spec.display_name.clone(),
        specialty: e.spec.specialty.clone(),
        payload_types: e.spec.payload_types.iter().map(|p| p.to_string()).collect(),
        active: e.is_active(),
        published_seq: e.published_seq,
        retired_seq: e.retired_seq.unwrap_or(0),
        organisation: org.map(organisation_to_pb),
    }
}
