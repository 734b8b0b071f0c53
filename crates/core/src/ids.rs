//! Australian healthcare identifiers and sealpost's own addressing.
//!
//! HPI-O (organisations, prefix 800362), HPI-I (practitioners, prefix 800361) and IHI
//! (patients, prefix 800360) are 16 digits whose last digit is a Luhn check digit over the
//! first fifteen. Parsing says exactly what is wrong with a bad identifier, because these
//! strings are typed by people and pasted between clinical systems. Endpoints (the
//! addressable inboxes of the directory) are named `<HPI-O>/<local>`, where `<local>` is a
//! practitioner's HPI-I or a service slug.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length of every national healthcare identifier, in digits.
pub const IDENTIFIER_DIGITS: usize = 16;
/// Longest service slug accepted in an endpoint address, in bytes.
pub const SERVICE_SLUG_BYTES_MAX: usize = 64;

/// What is wrong with an identifier. Each variant names the problem a person can fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must be {IDENTIFIER_DIGITS} digits, got {len} characters")]
    WrongLength { kind: &'static str, len: usize },
    #[error("{kind} must contain only digits, found {found:?} at position {position}")]
    NonDigit {
        kind: &'static str,
        position: usize,
        found: char,
    },
    #[error("{kind} must start with {expected}, got {found}")]
    WrongPrefix {
        kind: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{kind} check digit is wrong: expected {expected}, got {found}")]
    BadCheckDigit {
        kind: &'static str,
        expected: u8,
        found: u8,
    },
    #[error("endpoint address must be <HPI-O>/<service or HPI-I>, got {0:?}")]
    EndpointShape(String),
    #[error(
        "service name must be 1 to {SERVICE_SLUG_BYTES_MAX} characters of a-z, 0-9 and '-', got {0:?}"
    )]
    ServiceSlug(String),
}

/// Luhn check digit for a run of decimal digits (the payload, without the check digit).
pub fn luhn_check_digit(payload: &[u8]) -> u8 {
    // Double every second digit counting from the right of the payload, since the check
    // digit will be appended to the right.
    let mut sum: u32 = 0;
    for (i, d) in payload.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    ((10 - (sum % 10)) % 10) as u8
}

fn parse_identifier(
    kind: &'static str,
    prefix: &'static str,
    s: &str,
) -> Result<[u8; IDENTIFIER_DIGITS], IdError> {
    let len = s.chars().count();
    if len != IDENTIFIER_DIGITS {
        return Err(IdError::WrongLength { kind, len });
    }
    let mut digits = [0u8; IDENTIFIER_DIGITS];
    for (position, found) in s.chars().enumerate() {
        match found.to_digit(10) {
            Some(d) if found.is_ascii_digit() => digits[position] = d as u8,
            _ => {
                return Err(IdError::NonDigit {
                    kind,
                    position,
                    found,
                });
            }
        }
    }
    if !s.starts_with(prefix) {
        return Err(IdError::WrongPrefix {
            kind,
            expected: prefix,
            found: s[..prefix.len()].to_string(),
        });
    }
    let expected = luhn_check_digit(&digits[..IDENTIFIER_DIGITS - 1]);
    let found = digits[IDENTIFIER_DIGITS - 1];
    if expected != found {
        return Err(IdError::BadCheckDigit {
            kind,
            expected,
            found,
        });
    }
    Ok(digits)
}

/// Completes a 15-digit payload with its Luhn check digit. Used by the demo directory and
/// tests to mint valid identifiers.
fn complete(prefix: &str, serial: u64) -> String {
    let body = format!("{prefix}{serial:09}");
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    format!("{body}{}", luhn_check_digit(&digits))
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The issuing prefix of this kind of identifier.
            pub const PREFIX: &'static str = $prefix;
            /// Human name of the identifier kind, used in error messages.
            pub const KIND: &'static str = $kind;

            /// Parses and validates length, digits, prefix and check digit.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                parse_identifier($kind, $prefix, s).map(|_| Self(s.to_string()))
            }

            /// A valid identifier with the given serial (at most nine digits), for demo
            /// data and tests.
            pub fn from_serial(serial: u64) -> Self {
                Self(complete($prefix, serial % 1_000_000_000))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

identifier!(
    /// Healthcare Provider Identifier for an Organisation.
    HpiO, "HPI-O", "800362"
);
identifier!(
    /// Healthcare Provider Identifier for an Individual (a practitioner).
    HpiI, "HPI-I", "800361"
);
identifier!(
    /// Individual Healthcare Identifier (a patient). Never logged with a name.
    Ihi, "IHI", "800360"
);

/// The part of an endpoint address after the organisation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum EndpointLocal {
    /// A service of the organisation, such as `cardiology` or `pathology-results`.
    Service(String),
    /// A practitioner working at the organisation.
    Practitioner(HpiI),
}

/// An addressable inbox in the directory: `<HPI-O>/<service slug or HPI-I>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointId {
    pub org: HpiO,
    pub local: EndpointLocal,
}

/// Checks a service slug: lowercase letters, digits and dashes, not starting with a dash.
pub fn validate_service_slug(s: &str) -> Result<(), IdError> {
    let ok = !s.is_empty()
        && s.len() <= SERVICE_SLUG_BYTES_MAX
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdError::ServiceSlug(s.to_string()))
    }
}

impl EndpointId {
    pub fn service(org: HpiO, slug: &str) -> Result<Self, IdError> {
        validate_service_slug(slug)?;
        Ok(Self {
            org,
            local: EndpointLocal::Service(slug.to_string()),
        })
    }

    pub fn practitioner(org: HpiO, hpii: HpiI) -> Self {
        Self {
            org,
            local: EndpointLocal::Practitioner(hpii),
        }
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (org, local) = s
            .split_once('/')
            .ok_or_else(|| IdError::EndpointShape(s.to_string()))?;
        let org = HpiO::parse(org)?;
        // A local part that looks like an identifier must be a valid HPI-I; anything else
        // is a service slug.
        if local.len() == IDENTIFIER_DIGITS && local.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self::practitioner(org, HpiI::parse(local)?))
        } else {
            Self::service(org, local)
        }
    }
}

impl EndpointId {
    /// The local part as text: the service slug or the HPI-I.
    pub fn local_str(&self) -> &str {
        match &self.local {
            EndpointLocal::Service(s) => s,
            EndpointLocal::Practitioner(p) => p.as_str(),
        }
    }

    /// The id as text, `<HPI-O>/<local>` (as displayed), built in one allocation without
    /// the formatting machinery: it is the endpoint view's key, made for every endpoint
    /// event folded.
    pub fn text(&self) -> String {
        let (org, local) = (self.org.as_str(), self.local_str());
        let mut s = String::with_capacity(org.len() + 1 + local.len());
        s.push_str(org);
        s.push('/');
        s.push_str(local);
        s
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.org.as_str())?;
        f.write_str("/")?;
        f.write_str(self.local_str())
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointId({self})")
    }
}

impl FromStr for EndpointId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for EndpointId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<EndpointId> for String {
    fn from(v: EndpointId) -> String {
        v.text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_check(body15: &str) -> String {
        let d: Vec<u8> = body15.bytes().map(|b| b - b'0').collect();
        format!("{body15}{}", luhn_check_digit(&d))
    }

    /// Known Luhn vectors: the classic 79927398713 and a card-style number.
    #[test]
    fn luhn_known_vectors() {
        assert_eq!(luhn_check_digit(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1]), 3);
        assert_eq!(
            luhn_check_digit(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
            1
        );
    }

    /// Each bad shape of identifier is refused with the error that names its problem.
    #[test]
    fn table_of_bad_identifiers() {
        let good = with_check("800362000000001");
        assert!(HpiO::parse(&good).is_ok());
        let bad_check = {
            let mut s = good.clone();
            let last = s.pop().and_then(|c| c.to_digit(10)).unwrap_or(0);
            s.push(char::from_digit((last + 1) % 10, 10).unwrap_or('0'));
            s
        };
        type Case = (String, fn(&IdError) -> bool);
        let cases: Vec<Case> = vec![
            ("".into(), |e| {
                matches!(e, IdError::WrongLength { len: 0, .. })
            }),
            ("80036200000000".into(), |e| {
                matches!(e, IdError::WrongLength { len: 14, .. })
            }),
            ("80036200000000012".into(), |e| {
                matches!(e, IdError::WrongLength { len: 17, .. })
            }),
            ("8003620000000a01".into(), |e| {
                matches!(
                    e,
                    IdError::NonDigit {
                        position: 13,
                        found: 'a',
                        ..
                    }
                )
            }),
            ("800362 000000001".into(), |e| {
                matches!(e, IdError::NonDigit { position: 6, .. })
            }),
            (
                "８００３６２０００００００１２".into(),
                |e| matches!(e, IdError::WrongLength { .. } | IdError::NonDigit { .. }),
            ),
            (with_check("800361000000001"), |e| {
                matches!(
                    e,
                    IdError::WrongPrefix {
                        expected: "800362",
                        ..
                    }
                )
            }),
            (bad_check, |e| matches!(e, IdError::BadCheckDigit { .. })),
        ];
        for (input, pred) in cases {
            let err = HpiO::parse(&input).expect_err(&input);
            assert!(pred(&err), "{input:?} gave {err:?}");
            assert!(err.to_string().contains("HPI-O"), "{err}");
        }
    }

    #[test]
    fn each_kind_checks_its_own_prefix() {
        assert!(HpiI::parse(&with_check("800361123456789")).is_ok());
        assert!(Ihi::parse(&with_check("800360123456789")).is_ok());
        assert!(matches!(
            Ihi::parse(&with_check("800361123456789")),
            Err(IdError::WrongPrefix { kind: "IHI", .. })
        ));
    }

    #[test]
    fn endpoint_addresses_round_trip() {
        let org = HpiO::from_serial(42);
        let svc = EndpointId::service(org.clone(), "cardiology").expect("slug");
        assert_eq!(EndpointId::parse(&svc.to_string()), Ok(svc));
        let pr = EndpointId::practitioner(org.clone(), HpiI::from_serial(7));
        assert_eq!(EndpointId::parse(&pr.to_string()), Ok(pr));
        assert!(matches!(
            EndpointId::parse(&format!("{org}/Cardiology")),
            Err(IdError::ServiceSlug(_))
        ));
        assert!(matches!(
            EndpointId::parse(&format!("{org}/8003610000000000")),
            Err(IdError::BadCheckDigit { kind: "HPI-I", .. })
        ));
        assert!(matches!(
            EndpointId::parse("cardiology"),
            Err(IdError::EndpointShape(_))
        ));
    }

    proptest! {
        /// Every minted identifier validates, and changing any single digit breaks the
        /// check digit (Luhn catches all single-digit errors).
        #[test]
        fn single_digit_changes_are_caught(serial in 0u64..1_000_000_000, pos in 0usize..16, delta in 1u8..10) {
            let id = HpiI::from_serial(serial);
            prop_assert!(HpiI::parse(id.as_str()).is_ok());
            let mut bytes = id.as_str().as_bytes().to_vec();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).expect("ascii");
            prop_assert!(HpiI::parse(&changed).is_err());
        }

        /// Arbitrary strings never panic the parser, and whatever parses is 16 digits with
        /// the right prefix and a correct check digit.
        #[test]
        fn parser_is_total(s in "\\PC{0,20}") {
            if let Ok(id) = Ihi::parse(&s) {
                prop_assert_eq!(id.as_str().len(), 16);
                prop_assert!(id.as_str().starts_with("800360"));
                let d: Vec<u8> = id.as_str().bytes().map(|b| b - b'0').collect();
                prop_assert_eq!(luhn_check_digit(&d[..15]), d[15]);
            }
        }
    }
}
