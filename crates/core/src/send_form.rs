//! The stateless checks of a send request's fields, in the order a node refuses them: the
//! payload's size, the practitioner and patient identifiers, the recipients, the payload
//! type, the priority, the client message id and the delivery window. The node's edge (gRPC
//! `Send` and the MLLP front door) and the `send_request_decode` fuzz target both call
//! [`check`], so what the fuzzer exercises is exactly what a node accepts. The sender's
//! organisation is parsed apart ([`sender`]), because a node authorizes the caller against
//! it before anything else. Nothing here reads the directory or the clock.

use crate::directory::{FieldError, PayloadType};
use crate::ids::{EndpointId, HpiI, HpiO, IdError, Ihi};
use crate::message::{Priority, check_client_message_id, check_recipients};

/// A send request's fields as the client gave them, before parsing.
#[derive(Clone, Copy, Debug)]
pub struct SendForm<'a> {
    pub from_practitioner: &'a str,
    pub patient_ihi: &'a str,
    pub to: &'a [String],
    pub payload_type: &'a str,
    pub priority: &'a str,
    /// Blank: the node makes one up (see [`CheckedSend::client_message_id`]).
    pub client_message_id: &'a str,
    /// 0: the node's default.
    pub deliver_within_ms: u64,
    pub payload_bytes: u64,
}

/// A node's limits on a send (from its configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendLimits {
    pub payload_bytes_max: u64,
    pub deliver_within_ms_default: u64,
    pub deliver_within_ms_max: u64,
}

/// The fields of a send that passed every stateless check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedSend {
    pub practitioner: Option<HpiI>,
    pub patient: Option<Ihi>,
    pub recipients: Vec<EndpointId>,
    pub payload_type: PayloadType,
    pub priority: Priority,
    /// `None` when the client gave none: the node generates one (a UUID), which always
    /// passes [`check_client_message_id`].
    pub client_message_id: Option<String>,
    pub deliver_within_ms: u64,
}

/// Why a send's fields were refused, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendFormError {
    /// The payload is over the node's limit (a gRPC node answers ResourceExhausted).
    #[error("payload is {bytes} bytes, the limit is {max} bytes")]
    PayloadTooLarge { bytes: u64, max: u64 },
    #[error("{field}: {error}")]
    Id { field: &'static str, error: IdError },
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error("deliver_within_ms: {ms} is more than the limit of {max} ms")]
    DeliverWithinTooLong { ms: u64, max: u64 },
}

/// The sender's organisation (`from_org`, trimmed).
pub fn sender(from_org: &str) -> Result<HpiO, SendFormError> {
    HpiO::parse(from_org.trim()).map_err(|error| SendFormError::Id {
        field: "from_org",
        error,
    })
}

/// An optional identifier: blank is absent, anything else (trimmed) must parse.
fn optional<T>(
    field: &'static str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, IdError>,
) -> Result<Option<T>, SendFormError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    parse(text)
        .map(Some)
        .map_err(|error| SendFormError::Id { field, error })
}

/// Every stateless check of a send, stopping at the first refusal in the order the module
/// note gives.
pub fn check(form: &SendForm<'_>, limits: &SendLimits) -> Result<CheckedSend, SendFormError> {
    if form.payload_bytes > limits.payload_bytes_max {
        return Err(SendFormError::PayloadTooLarge {
            bytes: form.payload_bytes,
            max: limits.payload_bytes_max,
        });
    }
    let practitioner = optional("from_practitioner", form.from_practitioner, HpiI::parse)?;
    let patient = optional("patient_ihi", form.patient_ihi, Ihi::parse)?;
    let recipients = form
        .to
        .iter()
        .map(|t| EndpointId::parse(t).map_err(|error| SendFormError::Id { field: "to", error }))
        .collect::<Result<Vec<_>, _>>()?;
    check_recipients(&recipients)?;
    let payload_type: PayloadType = form.payload_type.parse()?;
    let priority: Priority = form.priority.parse()?;
    let client_message_id = if form.client_message_id.trim().is_empty() {
        None
    } else {
        check_client_message_id(form.client_message_id)?;
        Some(form.client_message_id.to_string())
    };
    let deliver_within_ms = match form.deliver_within_ms {
        0 => limits.deliver_within_ms_default,
        ms if ms > limits.deliver_within_ms_max => {
            return Err(SendFormError::DeliverWithinTooLong {
                ms,
                max: limits.deliver_within_ms_max,
            });
        }
        ms => ms,
    };
    Ok(CheckedSend {
        practitioner,
        patient,
        recipients,
        payload_type,
        priority,
        client_message_id,
        deliver_within_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::CLIENT_MESSAGE_ID_BYTES_MAX;

    const LIMITS: SendLimits = SendLimits {
        payload_bytes_max: 1024,
        deliver_within_ms_default: 60_000,
        deliver_within_ms_max: 3_600_000,
    };

    fn to() -> Vec<String> {
        vec![format!("{}/results", HpiO::from_serial(2))]
    }

    fn form(to: &[String]) -> SendForm<'_> {
        SendForm {
            from_practitioner: "",
            patient_ihi: "",
            to,
            payload_type: "TEXT",
            priority: "",
            client_message_id: "",
            deliver_within_ms: 0,
            payload_bytes: 10,
        }
    }

    #[test]
    fn a_plain_send_passes_with_the_defaults_filled_in() {
        let to = to();
        let c = check(&form(&to), &LIMITS).expect("a plain send passes");
        assert_eq!(c.recipients.len(), 1);
        assert_eq!(c.recipients[0].to_string(), to[0]);
        assert_eq!(c.payload_type, PayloadType::Text);
        assert_eq!(c.priority, Priority::Routine);
        assert_eq!(c.client_message_id, None);
        assert_eq!(c.deliver_within_ms, LIMITS.deliver_within_ms_default);
        assert_eq!((c.practitioner, c.patient), (None, None));
    }

    #[test]
    fn each_bad_field_is_refused_by_name() {
        let to = to();
        let nobody = vec!["nobody".to_string()];
        let long_id = "x".repeat(CLIENT_MESSAGE_ID_BYTES_MAX + 1);
        let cases: Vec<(SendForm<'_>, &str)> = vec![
            (
                SendForm {
                    payload_bytes: 1025,
                    ..form(&to)
                },
                "payload is 1025 bytes, the limit is 1024 bytes",
            ),
            (
                SendForm {
                    from_practitioner: "123",
                    ..form(&to)
                },
                "from_practitioner: ",
            ),
            (
                SendForm {
                    patient_ihi: "80036",
                    ..form(&to)
                },
                "patient_ihi: ",
            ),
            (form(&[]), "to: needs at least one recipient"),
            (form(&nobody), "to: "),
            (
                SendForm {
                    payload_type: "SPREADSHEET",
                    ..form(&to)
                },
                "payload_type",
            ),
            (
                SendForm {
                    priority: "whenever",
                    ..form(&to)
                },
                "priority",
            ),
            (
                SendForm {
                    client_message_id: &long_id,
                    ..form(&to)
                },
                "client_message_id: is 129 bytes",
            ),
            (
                SendForm {
                    deliver_within_ms: LIMITS.deliver_within_ms_max + 1,
                    ..form(&to)
                },
                "deliver_within_ms: 3600001 is more than the limit of 3600000 ms",
            ),
        ];
        for (f, expected) in cases {
            let e = check(&f, &LIMITS).expect_err(expected).to_string();
            assert!(
                e.starts_with(expected),
                "{e:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn the_size_is_refused_before_any_field() {
        let f = SendForm {
            payload_bytes: 2048,
            from_practitioner: "not an id",
            priority: "whenever",
            ..form(&[])
        };
        assert!(matches!(
            check(&f, &LIMITS),
            Err(SendFormError::PayloadTooLarge {
                bytes: 2048,
                max: 1024
            })
        ));
    }

    #[test]
    fn identifiers_are_trimmed_and_a_given_client_id_is_kept() {
        let to = to();
        let f = SendForm {
            client_message_id: "lab-42",
            deliver_within_ms: 5,
            priority: " Urgent ",
            ..form(&to)
        };
        let c = check(&f, &LIMITS).expect("passes");
        assert_eq!(c.client_message_id.as_deref(), Some("lab-42"));
        assert_eq!(c.deliver_within_ms, 5);
        assert_eq!(c.priority, Priority::Urgent);
        assert_eq!(
            sender(&format!("  {}  ", HpiO::from_serial(1))),
            Ok(HpiO::from_serial(1))
        );
        assert!(matches!(
            sender("42"),
            Err(SendFormError::Id {
                field: "from_org",
                ..
            })
        ));
    }
}
