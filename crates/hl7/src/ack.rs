//! HL7 v2 acknowledgements: choosing original (AA/AE/AR) or enhanced commit (CA/CE/CR)
//! mode from the incoming MSH, building the ER7 response (MSH with sender and receiver
//! swapped, MSA and an optional ERR carrying a table 0357 error code) and reading the
//! acknowledgements remote systems send back. Outgoing acknowledgements always use the
//! standard `|^~\&` separators and escape every value they copy.

use crate::er7::{Encoding, Message, Msh, ParseError};

/// HL7 table 0357: segment sequence error.
pub const ERROR_SEGMENT_SEQUENCE: u16 = 100;
/// HL7 table 0357: required field missing.
pub const ERROR_REQUIRED_FIELD_MISSING: u16 = 101;
/// HL7 table 0357: data type error.
pub const ERROR_DATA_TYPE: u16 = 102;
/// HL7 table 0357: table value not found.
pub const ERROR_TABLE_VALUE_NOT_FOUND: u16 = 103;
/// HL7 table 0357: unsupported message type.
pub const ERROR_UNSUPPORTED_MESSAGE_TYPE: u16 = 200;
/// HL7 table 0357: unsupported event code.
pub const ERROR_UNSUPPORTED_EVENT_CODE: u16 = 201;
/// HL7 table 0357: unsupported processing id.
pub const ERROR_UNSUPPORTED_PROCESSING_ID: u16 = 202;
/// HL7 table 0357: unsupported version id.
pub const ERROR_UNSUPPORTED_VERSION_ID: u16 = 203;
/// HL7 table 0357: unknown key identifier.
pub const ERROR_UNKNOWN_KEY_IDENTIFIER: u16 = 204;
/// HL7 table 0357: duplicate key identifier.
pub const ERROR_DUPLICATE_KEY_IDENTIFIER: u16 = 205;
/// HL7 table 0357: application record locked.
pub const ERROR_APPLICATION_RECORD_LOCKED: u16 = 206;
/// HL7 table 0357: application internal error.
pub const ERROR_APPLICATION_INTERNAL: u16 = 207;

/// The text HL7 table 0357 gives for an error code.
pub fn error_code_text(code: u16) -> &'static str {
    match code {
        0 => "Message accepted",
        ERROR_SEGMENT_SEQUENCE => "Segment sequence error",
        ERROR_REQUIRED_FIELD_MISSING => "Required field missing",
        ERROR_DATA_TYPE => "Data type error",
        ERROR_TABLE_VALUE_NOT_FOUND => "Table value not found",
        ERROR_UNSUPPORTED_MESSAGE_TYPE => "Unsupported message type",
        ERROR_UNSUPPORTED_EVENT_CODE => "Unsupported event code",
        ERROR_UNSUPPORTED_PROCESSING_ID => "Unsupported processing id",
        ERROR_UNSUPPORTED_VERSION_ID => "Unsupported version id",
        ERROR_UNKNOWN_KEY_IDENTIFIER => "Unknown key identifier",
        ERROR_DUPLICATE_KEY_IDENTIFIER => "Duplicate key identifier",
        ERROR_APPLICATION_RECORD_LOCKED => "Application record locked",
        ERROR_APPLICATION_INTERNAL => "Application internal error",
        _ => "Error",
    }
}

/// MSA-1 acknowledgement codes (HL7 table 0008).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// Original mode: application accept.
    AA,
    /// Original mode: application error.
    AE,
    /// Original mode: application reject.
    AR,
    /// Enhanced mode: commit accept.
    CA,
    /// Enhanced mode: commit error.
    CE,
    /// Enhanced mode: commit reject.
    CR,
}

impl AckCode {
    /// The two-letter code.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// Reads a two-letter code; `None` for anything else.
    pub fn from_code(code: &str) -> Option<AckCode> {
        match code {
            "AA" => Some(AckCode::AA),
            "AE" => Some(AckCode::AE),
            "AR" => Some(AckCode::AR),
            "CA" => Some(AckCode::CA),
            "CE" => Some(AckCode::CE),
            "CR" => Some(AckCode::CR),
            _ => None,
        }
    }

    /// True for the enhanced-mode commit codes CA, CE and CR.
    pub fn is_commit(self) -> bool {
        matches!(self, AckCode::CA | AckCode::CE | AckCode::CR)
    }

    /// True for AA and CA.
    pub fn is_accept(self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }
}

/// Which acknowledgement rules the sender asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Original,
    Enhanced,
}

/// What happened to an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Error,
    Rejected,
}

/// Enhanced mode when MSH-15 or MSH-16 is valued, original mode otherwise.
pub fn mode_for(msh: &Msh) -> AckMode {
    if msh.accept_ack_type.is_empty() && msh.app_ack_type.is_empty() {
        AckMode::Original
    } else {
        AckMode::Enhanced
    }
}

/// The MSA-1 code for an outcome: AA/AE/AR in original mode, CA/CE/CR (commit level) in
/// enhanced mode.
pub fn ack_code(mode: AckMode, outcome: Outcome) -> AckCode {
    match (mode, outcome) {
        (AckMode::Original, Outcome::Accepted) => AckCode::AA,
        (AckMode::Original, Outcome::Error) => AckCode::AE,
        (AckMode::Original, Outcome::Rejected) => AckCode::AR,
        (AckMode::Enhanced, Outcome::Accepted) => AckCode::CA,
        (AckMode::Enhanced, Outcome::Error) => AckCode::CE,
        (AckMode::Enhanced, Outcome::Rejected) => AckCode::CR,
    }
}

/// The error reported in ERR: a table 0357 code and a message for the integrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    pub code: u16,
    pub text: String,
}

impl AckError {
    pub fn new(code: u16, text: impl Into<String>) -> AckError {
        AckError {
            code,
            text: text.into(),
        }
    }

    /// 100: segment sequence error.
    pub fn segment_sequence(text: impl Into<String>) -> AckError {
        AckError::new(ERROR_SEGMENT_SEQUENCE, text)
    }

    /// 101: required field missing.
    pub fn required_field_missing(text: impl Into<String>) -> AckError {
        AckError::new(ERROR_REQUIRED_FIELD_MISSING, text)
    }

    /// 102: data type error.
    pub fn data_type(text: impl Into<String>) -> AckError {
        AckError::new(ERROR_DATA_TYPE, text)
    }

    /// 103: table value not found.
    pub fn table_value_not_found(text: impl Into<String>) -> AckError {
        AckError::new(ERROR_TABLE_VALUE_NOT_FOUND, text)
    }

    /// 200: unsupported message type.
    pub fn unsupported_message_type(text: impl Into<String>) -> AckError {
        AckError::new(ERROR_UNSUPPORTED_MESSAGE_TYPE, text)
    }

    /// 204: unknown key identifier (e.g. an unknown HPI-O or HPI-I).
    pub fn unknown_key_identifier(text: impl Into<String>) -> AckError {
        AckError::new(ERROR_UNKNOWN_KEY_IDENTIFIER, text)
    }

    /// 207: application internal error.
    pub fn application_internal(text: impl Into<String>) -> AckError {
        AckError::new(ERROR_APPLICATION_INTERNAL, text)
    }

    /// The ERR for a parse failure: its table 0357 code and its (content-free) message.
    pub fn from_parse_error(error: &ParseError) -> AckError {
        let code = match error {
            ParseError::NoMsh | ParseError::UnexpectedMsh { .. } => ERROR_SEGMENT_SEQUENCE,
            ParseError::MissingField(_) => ERROR_REQUIRED_FIELD_MISSING,
            ParseError::MshTooShort
            | ParseError::BadEncodingCharacters(_)
            | ParseError::NotUtf8 { .. }
            | ParseError::BadSegmentId { .. } => ERROR_DATA_TYPE,
            ParseError::TooManySegments { .. }
            | ParseError::TooManyFields { .. }
            | ParseError::TooManyElements { .. } => ERROR_APPLICATION_INTERNAL,
        };
        AckError::new(code, error.to_string())
    }
}

/// MSH-9 of the response to `original`: `RRI^<trigger>^RRI_I12` for referrals (REF^I12 to
/// I15), `ACK^<trigger>^ACK` otherwise. Values are decoded; the caller escapes them.
fn response_type(original: &Msh) -> [&str; 3] {
    let referral = original.message_type == "REF"
        && matches!(original.trigger.as_str(), "I12" | "I13" | "I14" | "I15");
    if referral {
        ["RRI", original.trigger.as_str(), "RRI_I12"]
    } else {
        ["ACK", original.trigger.as_str(), "ACK"]
    }
}

/// Joins already-escaped parts with `sep`, dropping empty trailing parts.
fn join_trimmed(parts: &[String], sep: char) -> String {
    let used = parts
        .iter()
        .rposition(|p| !p.is_empty())
        .map_or(0, |i| i + 1);
    parts.get(..used).unwrap_or_default().join(&sep.to_string())
}

/// An HD value (namespace^universal id^type), each part escaped.
fn hd(enc: &Encoding, namespace: &str, universal_id: &str, universal_id_type: &str) -> String {
    let parts = [namespace, universal_id, universal_id_type].map(|p| enc.escape(p));
    join_trimmed(&parts, enc.component)
}

/// Builds the acknowledgement of `original` as ER7 with `\r` segment terminators:
/// MSH (sender and receiver swapped, MSH-7 = `now`, MSH-10 = `control_id`, MSH-11 and
/// MSH-12 echoed), `MSA|<code>|<original control id>` and, with `error`, an ERR whose
/// ERR-3 is `<code>^<table text>^HL70357`, ERR-4 `E` and ERR-8 the escaped message (the
/// message also goes in MSA-3). Commit acknowledgements (CA/CE/CR) carry `NE` in MSH-15
/// and MSH-16 so they are not themselves acknowledged.
pub fn build_ack(
    original: &Msh,
    code: AckCode,
    error: Option<&AckError>,
    now: &str,
    control_id: &str,
) -> String {
    let enc = Encoding::default();
    let esc = |s: &str| enc.escape(s);
    let [kind, trigger, structure] = response_type(original);
    let message_type = join_trimmed(&[esc(kind), esc(trigger), esc(structure)], enc.component);
    let no_ack = if code.is_commit() { "NE" } else { "" };
    let msh_fields = [
        hd(
            &enc,
            &original.receiving_application,
            &original.receiving_application_universal_id,
            &original.receiving_application_universal_id_type,
        ),
        hd(
            &enc,
            &original.receiving_facility,
            &original.receiving_facility_universal_id,
            &original.receiving_facility_universal_id_type,
        ),
        hd(
            &enc,
            &original.sending_application,
            &original.sending_application_universal_id,
            &original.sending_application_universal_id_type,
        ),
        hd(
            &enc,
            &original.sending_facility,
            &original.sending_facility_universal_id,
            &original.sending_facility_universal_id_type,
        ),
        esc(now),
        String::new(),
        message_type,
        esc(control_id),
        esc(&original.processing_id),
        esc(&original.version),
        String::new(),
        String::new(),
        no_ack.to_owned(),
        no_ack.to_owned(),
    ];
    let mut out = String::with_capacity(256);
    out.push_str("MSH");
    out.push(enc.field);
    out.push_str(&enc.msh2());
    out.push(enc.field);
    out.push_str(&join_trimmed(&msh_fields, enc.field));
    out.push('\r');

    let mut msa = vec![code.as_str().to_owned(), esc(&original.control_id)];
    if let Some(e) = error {
        msa.push(esc(&e.text));
    }
    out.push_str("MSA");
    out.push(enc.field);
    out.push_str(&join_trimmed(&msa, enc.field));
    out.push('\r');

    if let Some(e) = error {
        let err3 = [
            e.code.to_string(),
            esc(error_code_text(e.code)),
            "HL70357".to_owned(),
        ];
        let err_fields = [
            String::new(),
            String::new(),
            err3.join(&enc.component.to_string()),
            "E".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            esc(&e.text),
        ];
        out.push_str("ERR");
        out.push(enc.field);
        out.push_str(&join_trimmed(&err_fields, enc.field));
        out.push('\r');
    }
    out
}

/// Reads an acknowledgement received from a remote system: MSA-1 (which must be a known
/// code), MSA-2 (the acknowledged control id, empty if absent) and the error text, taken
/// from ERR-8, else MSA-3, else ERR-3.2, else the v2.3 style ERR-1.4.2.
pub fn parse_ack(msg: &Message) -> Option<(AckCode, String, Option<String>)> {
    msg.segment("MSA")?;
    let code = AckCode::from_code(&msg.get("MSA-1.1")?)?;
    let control_id = msg.get("MSA-2.1").unwrap_or_default();
    let text = msg
        .get("ERR-8")
        .or_else(|| msg.get("MSA-3"))
        .or_else(|| msg.get("ERR-3.2"))
        .or_else(|| msg.get("ERR-1.4.2"));
    Some((code, control_id, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::er7::parse_str;
    use crate::samples;

    const NOW: &str = "20250314093005";

    fn msh_of(sample: &str) -> Msh {
        parse_str(sample).expect("parses").msh().expect("msh")
    }

    fn segment_lines(ack: &str) -> Vec<&str> {
        assert!(ack.ends_with('\r'), "segments end with CR");
        assert!(!ack.contains('\n'));
        ack.split_terminator('\r').collect()
    }

    #[test]
    fn response_types() {
        for (sample, expected) in [
            (samples::REF_I12, "RRI^I12^RRI_I12"),
            (samples::ORU_R01, "ACK^R01^ACK"),
            (samples::MDM_T02, "ACK^T02^ACK"),
        ] {
            let ack = build_ack(&msh_of(sample), AckCode::AA, None, NOW, "ACK1");
            let parsed = parse_str(&ack).expect("ack parses");
            assert_eq!(parsed.get("MSH-9").as_deref(), Some(expected));
        }
        let other = Msh {
            message_type: "ADT".into(),
            trigger: "A08".into(),
            control_id: "X".into(),
            ..Msh::default()
        };
        let parsed = parse_str(&build_ack(&other, AckCode::AA, None, NOW, "A")).expect("parses");
        assert_eq!(parsed.get("MSH-9").as_deref(), Some("ACK^A08^ACK"));
    }

    #[test]
    fn addressing_is_swapped_and_header_echoed() {
        let original = msh_of(samples::REF_I12);
        let ack = build_ack(&original, AckCode::CA, None, NOW, "ACK-7");
        let lines = segment_lines(&ack);
        assert_eq!(lines.len(), 2);
        let parsed = parse_str(&ack).expect("parses");
        let reply = parsed.msh().expect("msh");
        assert_eq!(reply.sending_application, original.receiving_application);
        assert_eq!(reply.sending_facility, original.receiving_facility);
        assert_eq!(
            reply.sending_facility_universal_id,
            original.receiving_facility_universal_id
        );
        assert_eq!(
            reply.sending_facility_universal_id_type,
            original.receiving_facility_universal_id_type
        );
        assert_eq!(reply.receiving_application, original.sending_application);
        assert_eq!(reply.receiving_facility, original.sending_facility);
        assert_eq!(
            reply.receiving_facility_universal_id,
            original.sending_facility_universal_id
        );
        assert_eq!(
            parsed.get("MSH-5").as_deref(),
            Some("ExamplePMS^^L"),
            "every HD component is kept"
        );
        assert_eq!(
            parsed.get("MSH-3").as_deref(),
            Some("cardiology"),
            "empty trailing HD components are dropped"
        );
        assert_eq!(
            parsed.get("MSH-6").as_deref(),
            Some("Sunrise Medical Centre^8003620000001011^AUSHICPR")
        );
        assert_eq!(reply.datetime, NOW);
        assert_eq!(reply.control_id, "ACK-7");
        assert_eq!(reply.processing_id, original.processing_id);
        assert_eq!(reply.version, original.version);
        assert_eq!(reply.accept_ack_type, "NE");
        assert_eq!(reply.app_ack_type, "NE");
        assert_eq!(lines[1], format!("MSA|CA|{}", original.control_id));
    }

    #[test]
    fn original_mode_ack_has_no_ack_request() {
        let original = msh_of(samples::ORU_R01);
        let ack = build_ack(&original, AckCode::AA, None, NOW, "A2");
        let reply = parse_str(&ack).expect("parses").msh().expect("msh");
        assert_eq!(reply.accept_ack_type, "");
        assert_eq!(reply.app_ack_type, "");
        assert_eq!(mode_for(&reply), AckMode::Original);
    }

    #[test]
    fn error_segment_and_escaping() {
        let original = msh_of(samples::ORU_R01);
        let error = AckError::required_field_missing("PID-3 must carry |the IHI^NI| & more\rnow");
        let ack = build_ack(&original, AckCode::AE, Some(&error), NOW, "A3");
        let lines = segment_lines(&ack);
        assert_eq!(lines.len(), 3, "the text must not add segments: {lines:?}");
        assert!(lines[2].starts_with("ERR|||101^Required field missing^HL70357|E||||"));
        assert!(
            lines[2].ends_with("PID-3 must carry \\F\\the IHI\\S\\NI\\F\\ \\T\\ more\\.br\\now")
        );
        let parsed = parse_str(&ack).expect("parses");
        assert_eq!(parsed.segments[2].fields.len(), 8);
        assert_eq!(parsed.get("ERR-3.1").as_deref(), Some("101"));
        assert_eq!(parsed.get("ERR-3.3").as_deref(), Some("HL70357"));
        assert_eq!(parsed.get("ERR-4").as_deref(), Some("E"));
        assert_eq!(
            parsed.get("ERR-8").as_deref(),
            Some("PID-3 must carry |the IHI^NI| & more\nnow")
        );
        assert_eq!(parsed.get("MSA-3"), parsed.get("ERR-8"));
    }

    #[test]
    fn copied_values_are_escaped() {
        let original = Msh {
            sending_facility: "A|B^C".into(),
            message_type: "ORU".into(),
            trigger: "R01".into(),
            control_id: "ID|1".into(),
            ..Msh::default()
        };
        let ack = build_ack(&original, AckCode::AA, None, NOW, "N|1");
        let parsed = parse_str(&ack).expect("parses");
        let reply = parsed.msh().expect("msh");
        assert_eq!(reply.receiving_facility, "A|B^C");
        assert_eq!(reply.control_id, "N|1");
        assert_eq!(parsed.get("MSA-2").as_deref(), Some("ID|1"));
    }

    #[test]
    fn mode_selection() {
        assert_eq!(mode_for(&msh_of(samples::REF_I12)), AckMode::Enhanced);
        assert_eq!(mode_for(&msh_of(samples::MDM_T02)), AckMode::Enhanced);
        assert_eq!(mode_for(&msh_of(samples::ORU_R01)), AckMode::Original);
        let only_16 = Msh {
            app_ack_type: "AL".into(),
            ..Msh::default()
        };
        assert_eq!(mode_for(&only_16), AckMode::Enhanced);
        assert_eq!(mode_for(&Msh::default()), AckMode::Original);
    }

    #[test]
    fn ack_codes_by_mode() {
        use AckMode::{Enhanced, Original};
        use Outcome::{Accepted, Error, Rejected};
        let table = [
            (Original, Accepted, "AA"),
            (Original, Error, "AE"),
            (Original, Rejected, "AR"),
            (Enhanced, Accepted, "CA"),
            (Enhanced, Error, "CE"),
            (Enhanced, Rejected, "CR"),
        ];
        for (mode, outcome, code) in table {
            let got = ack_code(mode, outcome);
            assert_eq!(got.as_str(), code);
            assert_eq!(AckCode::from_code(code), Some(got));
        }
        assert_eq!(AckCode::from_code("XX"), None);
    }

    #[test]
    fn parse_ack_round_trip() {
        let original = msh_of(samples::REF_I12);
        let error = AckError::unknown_key_identifier("no endpoint for HPI-I in PRD-7");
        for (code, err) in [
            (AckCode::CA, None),
            (AckCode::CE, Some(&error)),
            (AckCode::AR, Some(&error)),
        ] {
            let ack = build_ack(&original, code, err, NOW, "R1");
            let parsed = parse_str(&ack).expect("parses");
            let (got, control, text) = parse_ack(&parsed).expect("is an ack");
            assert_eq!(got, code);
            assert_eq!(control, original.control_id);
            assert_eq!(text, err.map(|e| e.text.clone()));
        }
    }

    #[test]
    fn parse_ack_reads_older_styles_and_rejects_non_acks() {
        let v23 = parse_str("MSH|^~\\&|R|RF|S|SF|1||ACK^R01|9|P|2.3\rMSA|AE|C7\rERR|PID^1^3^101&Required field missing\r")
            .expect("parses");
        assert_eq!(
            parse_ack(&v23),
            Some((
                AckCode::AE,
                "C7".to_owned(),
                Some("Required field missing".to_owned())
            ))
        );
        let unknown =
            parse_str("MSH|^~\\&|R|RF|S|SF|1||ACK^R01|9|P|2.3\rMSA|ZZ|C7\r").expect("parses");
        assert_eq!(parse_ack(&unknown), None);
        let not_ack = parse_str(samples::ORU_R01).expect("parses");
        assert_eq!(parse_ack(&not_ack), None);
    }

    #[test]
    fn parse_errors_map_to_table_0357() {
        assert_eq!(
            AckError::from_parse_error(&ParseError::MissingField("MSH-10")).code,
            101
        );
        assert_eq!(AckError::from_parse_error(&ParseError::NoMsh).code, 100);
        let e = AckError::from_parse_error(&ParseError::NotUtf8 { offset: 12 });
        assert_eq!(e.code, 102);
        assert!(e.text.contains("12"));
        assert_eq!(error_code_text(204), "Unknown key identifier");
    }
}
