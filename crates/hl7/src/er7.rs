//! HL7 v2 ER7 ("pipe and hat") parsing into segments, fields, repetitions, components and
//! subcomponents, with HL7 escape decoding on access and typed views of the parts sealpost
//! routes on: the MSH header, the patient's identifiers (PID-3) and the referral providers
//! (PRD). Values are stored raw, exactly as received, and decoded when read. Parsing is
//! bounded by [`SEGMENTS_MAX`], [`FIELDS_MAX`] and [`ELEMENTS_MAX`], and its errors never
//! quote field contents, so they are safe to return in ERR segments and to log. There is
//! deliberately no accessor for patient names.

use thiserror::Error;

/// Most segments accepted in one message, in segments.
pub const SEGMENTS_MAX: usize = 1000;
/// Most fields accepted in one segment (counting MSH-1 and MSH-2 for MSH), in fields.
pub const FIELDS_MAX: usize = 512;
/// Most leaf values (subcomponents) accepted in one message, in elements. Every field,
/// repetition and component holds at least one, so this bounds the parsed tree's size.
pub const ELEMENTS_MAX: usize = 200_000;
/// Length of a segment id, in bytes.
pub const SEGMENT_ID_BYTES: usize = 3;
/// Most encoding characters accepted in MSH-2 (component, repetition, escape,
/// subcomponent and the optional truncation character), in characters.
pub const ENCODING_CHARS_MAX: usize = 5;
/// Fewest encoding characters accepted in MSH-2, in characters.
pub const ENCODING_CHARS_MIN: usize = 4;
/// Longest number accepted in a [`Message::get`] path index, in digits.
pub const PATH_INDEX_DIGITS_MAX: usize = 5;
/// Length of an IHI, in digits.
pub const IHI_DIGITS: usize = 16;
/// Prefix shared by every IHI.
pub const IHI_PREFIX: &str = "800360";

/// Why a message could not be parsed or lacks a required field. The texts are written for
/// an integrator reading an AE/AR acknowledgement; they name segments and fields but never
/// quote their contents.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("message does not start with an MSH segment")]
    NoMsh,
    #[error(
        "MSH segment is too short: it must hold the field separator (MSH-1) and at least \
         {ENCODING_CHARS_MIN} encoding characters (MSH-2)"
    )]
    MshTooShort,
    #[error("bad encoding characters in MSH-1/MSH-2: {0}")]
    BadEncodingCharacters(String),
    #[error("message is not valid UTF-8 at byte offset {offset}")]
    NotUtf8 { offset: usize },
    #[error("message has more than {max} segments")]
    TooManySegments { max: usize },
    #[error("segment {segment} has more than {max} fields")]
    TooManyFields { segment: String, max: usize },
    #[error(
        "message has more than {max} values (fields, repetitions, components and subcomponents)"
    )]
    TooManyElements { max: usize },
    #[error(
        "segment {index} (counting from 1) has an invalid segment id: expected 3 uppercase \
         letters or digits followed by the field separator"
    )]
    BadSegmentId { index: usize },
    #[error(
        "segment {index} (counting from 1) is a second MSH: send one message per frame \
         (batches are not supported)"
    )]
    UnexpectedMsh { index: usize },
    #[error("required field {0} is missing or empty")]
    MissingField(&'static str),
}

/// The separators of one message, read from MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    /// HL7 v2.7 truncation character (usually `#`): accepted in MSH-2, otherwise unused.
    pub truncation: Option<char>,
}

impl Default for Encoding {
    /// The usual `|^~\&`.
    fn default() -> Self {
        Encoding {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            truncation: None,
        }
    }
}

impl Encoding {
    /// MSH-2 as written in a message with these separators, e.g. `^~\&`.
    pub fn msh2(&self) -> String {
        let mut s = String::with_capacity(ENCODING_CHARS_MAX);
        s.push(self.component);
        s.push(self.repetition);
        s.push(self.escape);
        s.push(self.subcomponent);
        if let Some(t) = self.truncation {
            s.push(t);
        }
        s
    }

    /// Decodes HL7 escape sequences in a raw value: `\F\ \S\ \T\ \R\ \E\` (and `\P\` when
    /// a truncation character is declared) become the separators, `\.br\` a newline,
    /// `\Xhh..\` the hex-encoded text when it is valid UTF-8. Anything else, including an
    /// unterminated escape, is kept literally.
    pub fn unescape(&self, raw: &str) -> String {
        if !raw.contains(self.escape) {
            return raw.to_owned();
        }
        let esc_len = self.escape.len_utf8();
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        // Each pass consumes at least the escape character, so this ends within raw.len().
        while let Some(start) = rest.find(self.escape) {
            let (before, from_escape) = rest.split_at(start);
            out.push_str(before);
            let after = from_escape.get(esc_len..).unwrap_or_default();
            let Some(end) = after.find(self.escape) else {
                out.push_str(from_escape);
                return out;
            };
            let (sequence, closing) = after.split_at(end);
            match self.decode_sequence(sequence) {
                Some(decoded) => out.push_str(&decoded),
                None => {
                    out.push(self.escape);
                    out.push_str(sequence);
                    out.push(self.escape);
                }
            }
            rest = closing.get(esc_len..).unwrap_or_default();
        }
        out.push_str(rest);
        out
    }

    fn decode_sequence(&self, sequence: &str) -> Option<String> {
        let single = match sequence {
            "F" => Some(self.field),
            "S" => Some(self.component),
            "T" => Some(self.subcomponent),
            "R" => Some(self.repetition),
            "E" => Some(self.escape),
            "P" => self.truncation,
            ".br" => Some('\n'),
            _ => None,
        };
        if let Some(c) = single {
            return Some(c.to_string());
        }
        let hex = sequence.strip_prefix('X')?;
        decode_hex_utf8(hex)
    }

    /// Escapes text so it can be placed in a single value: separators become `\F\ \S\ \T\
    /// \R\ \E\` (`\P\` for a declared truncation character), line breaks become `\.br\`
    /// and other control characters `\Xhh\`, so the text can never end a segment or an
    /// MLLP frame.
    pub fn escape(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let code = if c == self.escape {
                Some("E")
            } else if c == self.field {
                Some("F")
            } else if c == self.component {
                Some("S")
            } else if c == self.subcomponent {
                Some("T")
            } else if c == self.repetition {
                Some("R")
            } else if Some(c) == self.truncation {
                Some("P")
            } else {
                None
            };
            if let Some(code) = code {
                out.push(self.escape);
                out.push_str(code);
                out.push(self.escape);
            } else if c == '\r' || c == '\n' {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push(self.escape);
                out.push_str(".br");
                out.push(self.escape);
            } else if c.is_ascii_control() && c != '\t' {
                out.push(self.escape);
                out.push_str(&format!("X{:02X}", u32::from(c)));
                out.push(self.escape);
            } else {
                out.push(c);
            }
        }
        out
    }
}

fn decode_hex_utf8(hex: &str) -> Option<String> {
    let digits = hex.as_bytes();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    let mut bytes = Vec::with_capacity(digits.len() / 2);
    for pair in digits.chunks_exact(2) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        bytes.push(u8::try_from(hi * 16 + lo).ok()?);
    }
    String::from_utf8(bytes).ok()
}

/// One parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub segments: Vec<Segment>,
    pub enc: Encoding,
}

/// One segment: its id and its fields, numbered from 1 as in HL7 (`fields[0]` is SEG-1;
/// for MSH, `fields[0]` is MSH-1, the field separator, and `fields[1]` MSH-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub id: String,
    pub fields: Vec<Field>,
}

/// One field: its repetitions (always at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub repetitions: Vec<Repetition>,
}

/// One repetition of a field: its components (always at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repetition {
    pub components: Vec<Component>,
}

/// One component: its subcomponents (always at least one), raw as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub subcomponents: Vec<String>,
}

impl Segment {
    /// Field `n`, numbered from 1 as in HL7.
    pub fn field(&self, n: usize) -> Option<&Field> {
        self.fields.get(n.checked_sub(1)?)
    }

    /// The raw (still escaped) value at field `field`, repetition `rep`, component `comp`,
    /// subcomponent `sub`, all numbered from 1.
    pub fn raw(&self, field: usize, rep: usize, comp: usize, sub: usize) -> Option<&str> {
        self.field(field)?
            .repetition(rep)?
            .component(comp)?
            .subcomponent(sub)
    }
}

impl Field {
    /// Repetition `n`, numbered from 1.
    pub fn repetition(&self, n: usize) -> Option<&Repetition> {
        self.repetitions.get(n.checked_sub(1)?)
    }

    /// Component `n` (from 1) of the first repetition.
    pub fn component(&self, n: usize) -> Option<&Component> {
        self.repetition(1)?.component(n)
    }

    /// True when every value in the field is empty.
    pub fn is_empty(&self) -> bool {
        self.repetitions.iter().all(Repetition::is_empty)
    }

    /// The field as ER7 text with the given separators (escape sequences left encoded).
    pub fn to_er7(&self, enc: &Encoding) -> String {
        let reps: Vec<String> = self.repetitions.iter().map(|r| r.to_er7(enc)).collect();
        reps.join(&enc.repetition.to_string())
    }

    fn single(value: &str) -> Field {
        Field {
            repetitions: vec![Repetition {
                components: vec![Component {
                    subcomponents: vec![value.to_owned()],
                }],
            }],
        }
    }
}

impl Repetition {
    /// Component `n`, numbered from 1.
    pub fn component(&self, n: usize) -> Option<&Component> {
        self.components.get(n.checked_sub(1)?)
    }

    /// True when every component is empty.
    pub fn is_empty(&self) -> bool {
        self.components.iter().all(Component::is_empty)
    }

    /// The repetition as ER7 text (escape sequences left encoded).
    pub fn to_er7(&self, enc: &Encoding) -> String {
        let comps: Vec<String> = self.components.iter().map(|c| c.to_er7(enc)).collect();
        comps.join(&enc.component.to_string())
    }
}

impl Component {
    /// Raw subcomponent `n`, numbered from 1.
    pub fn subcomponent(&self, n: usize) -> Option<&str> {
        self.subcomponents
            .get(n.checked_sub(1)?)
            .map(String::as_str)
    }

    /// True when every subcomponent is empty.
    pub fn is_empty(&self) -> bool {
        self.subcomponents.iter().all(String::is_empty)
    }

    /// The component as ER7 text (escape sequences left encoded).
    pub fn to_er7(&self, enc: &Encoding) -> String {
        self.subcomponents.join(&enc.subcomponent.to_string())
    }
}

/// Parses an ER7 message. Segments end with `\r` (`\n` and `\r\n` are tolerated); empty
/// lines are ignored. The first segment must be MSH.
pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len());
    let body = bytes.get(start..).unwrap_or_default();
    if !body.starts_with(b"MSH") {
        return Err(ParseError::NoMsh);
    }
    let msh_len = body
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(body.len());
    let enc = encoding_from_msh(body.get(..msh_len).unwrap_or_default())?;
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    parse_text(text, enc)
}

/// Parses an ER7 message held in a string; see [`parse`].
pub fn parse_str(s: &str) -> Result<Message, ParseError> {
    parse(s.as_bytes())
}

fn bad_encoding(reason: &str) -> ParseError {
    ParseError::BadEncodingCharacters(reason.to_owned())
}

/// Reads and checks MSH-1 and MSH-2 from the MSH line (bytes, before UTF-8 validation).
fn encoding_from_msh(line: &[u8]) -> Result<Encoding, ParseError> {
    let Some(&field_sep) = line.get(SEGMENT_ID_BYTES) else {
        return Err(ParseError::MshTooShort);
    };
    let rest = line.get(SEGMENT_ID_BYTES + 1..).unwrap_or_default();
    let msh2_len = rest
        .iter()
        .position(|&b| b == field_sep)
        .unwrap_or(rest.len());
    if msh2_len < ENCODING_CHARS_MIN && msh2_len == rest.len() {
        return Err(ParseError::MshTooShort);
    }
    if !(ENCODING_CHARS_MIN..=ENCODING_CHARS_MAX).contains(&msh2_len) {
        return Err(ParseError::BadEncodingCharacters(format!(
            "MSH-2 must hold {ENCODING_CHARS_MIN} or {ENCODING_CHARS_MAX} encoding characters, \
             found {msh2_len}"
        )));
    }
    let msh2 = rest.get(..msh2_len).unwrap_or_default();
    let mut all = Vec::with_capacity(ENCODING_CHARS_MAX + 1);
    all.push(field_sep);
    all.extend_from_slice(msh2);
    for (i, &b) in all.iter().enumerate() {
        if b == b'\r' || b == b'\n' {
            return Err(bad_encoding("a separator is a line break"));
        }
        if b.is_ascii_alphanumeric() {
            return Err(bad_encoding("a separator is a letter or digit"));
        }
        if !b.is_ascii_graphic() {
            return Err(bad_encoding(
                "a separator is not a printable ASCII punctuation character",
            ));
        }
        if all.get(..i).unwrap_or_default().contains(&b) {
            return Err(bad_encoding(
                "the same character is used for two separators",
            ));
        }
    }
    let at = |i: usize| msh2.get(i).map(|&b| char::from(b));
    match (at(0), at(1), at(2), at(3)) {
        (Some(component), Some(repetition), Some(escape), Some(subcomponent)) => Ok(Encoding {
            field: char::from(field_sep),
            component,
            repetition,
            escape,
            subcomponent,
            truncation: at(4),
        }),
        _ => Err(ParseError::MshTooShort),
    }
}

fn parse_text(text: &str, enc: Encoding) -> Result<Message, ParseError> {
    let mut segments = Vec::new();
    let mut elements = 0usize;
    let lines = text
        .split(['\r', '\n'])
        .filter(|line| !line.trim().is_empty());
    // Bounded: the loop stops with an error at SEGMENTS_MAX + 1.
    for (i, line) in lines.enumerate() {
        let index = i + 1;
        if index > SEGMENTS_MAX {
            return Err(ParseError::TooManySegments { max: SEGMENTS_MAX });
        }
        let segment = if index == 1 {
            parse_msh(line, &enc, &mut elements)?
        } else {
            parse_segment(line, index, &enc, &mut elements)?
        };
        segments.push(segment);
    }
    Ok(Message { segments, enc })
}

fn parse_msh(line: &str, enc: &Encoding, elements: &mut usize) -> Result<Segment, ParseError> {
    let after_sep = line.get(SEGMENT_ID_BYTES + 1..).unwrap_or_default();
    let (msh2, rest) = match after_sep.split_once(enc.field) {
        Some((msh2, rest)) => (msh2, Some(rest)),
        None => (after_sep, None),
    };
    count_element(elements)?;
    count_element(elements)?;
    let mut fields = vec![Field::single(&enc.field.to_string()), Field::single(msh2)];
    if let Some(rest) = rest {
        split_fields(rest, "MSH", enc, &mut fields, elements)?;
    }
    Ok(Segment {
        id: "MSH".to_owned(),
        fields,
    })
}

fn parse_segment(
    line: &str,
    index: usize,
    enc: &Encoding,
    elements: &mut usize,
) -> Result<Segment, ParseError> {
    let bytes = line.as_bytes();
    let id_ok = bytes.len() >= SEGMENT_ID_BYTES
        && bytes
            .iter()
            .take(SEGMENT_ID_BYTES)
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    let sep_ok = match bytes.get(SEGMENT_ID_BYTES) {
        None => true,
        Some(&b) => u32::from(b) == u32::from(enc.field),
    };
    if !id_ok || !sep_ok {
        return Err(ParseError::BadSegmentId { index });
    }
    let id = line.get(..SEGMENT_ID_BYTES).unwrap_or_default();
    if id == "MSH" {
        return Err(ParseError::UnexpectedMsh { index });
    }
    let mut fields = Vec::new();
    if let Some(rest) = line.get(SEGMENT_ID_BYTES + 1..) {
        split_fields(rest, id, enc, &mut fields, elements)?;
    }
    Ok(Segment {
        id: id.to_owned(),
        fields,
    })
}

fn count_element(elements: &mut usize) -> Result<(), ParseError> {
    *elements += 1;
    if *elements > ELEMENTS_MAX {
        return Err(ParseError::TooManyElements { max: ELEMENTS_MAX });
    }
    Ok(())
}

fn split_fields(
    rest: &str,
    id: &str,
    enc: &Encoding,
    fields: &mut Vec<Field>,
    elements: &mut usize,
) -> Result<(), ParseError> {
    for raw in rest.split(enc.field) {
        if fields.len() >= FIELDS_MAX {
            return Err(ParseError::TooManyFields {
                segment: id.to_owned(),
                max: FIELDS_MAX,
            });
        }
        fields.push(parse_field(raw, enc, elements)?);
    }
    Ok(())
}

fn parse_field(raw: &str, enc: &Encoding, elements: &mut usize) -> Result<Field, ParseError> {
    let mut repetitions = Vec::new();
    // Each leaf is counted against ELEMENTS_MAX, which bounds all three loops.
    for rep in raw.split(enc.repetition) {
        let mut components = Vec::new();
        for comp in rep.split(enc.component) {
            let mut subcomponents = Vec::new();
            for sub in comp.split(enc.subcomponent) {
                count_element(elements)?;
                subcomponents.push(sub.to_owned());
            }
            components.push(Component { subcomponents });
        }
        repetitions.push(Repetition { components });
    }
    Ok(Field { repetitions })
}

/// A parsed `Message::get` path such as `PID-3(2).1` or `OBX(2)-5.1.2`.
#[derive(Debug, PartialEq, Eq)]
struct Path<'a> {
    segment: &'a str,
    occurrence: usize,
    field: usize,
    repetition: usize,
    component: Option<usize>,
    subcomponent: Option<usize>,
}

fn parse_index(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > PATH_INDEX_DIGITS_MAX || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: usize = s.parse().ok()?;
    (n >= 1).then_some(n)
}

/// Splits `NAME(n)` into `("NAME", n)`; plain `NAME` is occurrence 1.
fn split_occurrence(s: &str) -> Option<(&str, usize)> {
    match s.find('(') {
        None => Some((s, 1)),
        Some(open) => {
            let inner = s.get(open + 1..)?.strip_suffix(')')?;
            Some((s.get(..open)?, parse_index(inner)?))
        }
    }
}

fn parse_path(path: &str) -> Option<Path<'_>> {
    let (segment_part, rest) = path.split_once('-')?;
    let (segment, occurrence) = split_occurrence(segment_part)?;
    if segment.len() != SEGMENT_ID_BYTES {
        return None;
    }
    let mut parts = rest.split('.');
    let (field_part, repetition) = split_occurrence(parts.next()?)?;
    let field = parse_index(field_part)?;
    let component = match parts.next() {
        Some(p) => Some(parse_index(p)?),
        None => None,
    };
    let subcomponent = match parts.next() {
        Some(p) => Some(parse_index(p)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Path {
        segment,
        occurrence,
        field,
        repetition,
        component,
        subcomponent,
    })
}

/// Decoded value of one subcomponent, empty when absent.
fn leaf(
    seg: &Segment,
    enc: &Encoding,
    field: usize,
    rep: usize,
    comp: usize,
    sub: usize,
) -> String {
    seg.raw(field, rep, comp, sub)
        .map(|raw| enc.unescape(raw))
        .unwrap_or_default()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl Message {
    /// The first segment named `id`.
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id == id)
    }

    /// Every segment named `id`, in order.
    pub fn segments_named(&self, id: &str) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(move |s| s.id == id)
    }

    /// Decodes a raw value with this message's separators.
    pub fn decode(&self, raw: &str) -> String {
        self.enc.unescape(raw)
    }

    /// The decoded value at an HL7 path, or `None` when it is absent, empty or the path is
    /// malformed. Paths are `SEG-F`, `SEG-F.C` or `SEG-F.C.S`, numbered from 1 as in HL7;
    /// `SEG(n)-…` picks the n-th segment of that name and `SEG-F(r)…` the r-th repetition
    /// (both default to the first). Examples: `MSH-9.1`, `PID-3(2).1`, `PRD-7.1.2`.
    ///
    /// When the path stops above a single value (e.g. `MSH-9` for `REF^I12^REF_I12`) and
    /// that element has several parts, the element is returned as ER7 text with its
    /// escape sequences still encoded, so the structure stays unambiguous. MSH-1 and MSH-2
    /// are returned verbatim.
    pub fn get(&self, path: &str) -> Option<String> {
        let p = parse_path(path)?;
        let seg = self
            .segments_named(p.segment)
            .nth(p.occurrence.checked_sub(1)?)?;
        let field = seg.field(p.field)?;
        if seg.id == "MSH" && p.field <= 2 {
            let whole = p.repetition == 1
                && p.component.unwrap_or(1) == 1
                && p.subcomponent.unwrap_or(1) == 1;
            return whole
                .then(|| seg.raw(p.field, 1, 1, 1).map(str::to_owned))
                .flatten()
                .and_then(non_empty);
        }
        let rep = field.repetition(p.repetition)?;
        let Some(c) = p.component else {
            if rep.is_empty() {
                return None;
            }
            return match rep.components.as_slice() {
                [only] if only.subcomponents.len() == 1 => {
                    non_empty(self.decode(only.subcomponent(1)?))
                }
                _ => Some(rep.to_er7(&self.enc)),
            };
        };
        let comp = rep.component(c)?;
        let Some(s) = p.subcomponent else {
            if comp.is_empty() {
                return None;
            }
            return match comp.subcomponents.as_slice() {
                [only] => non_empty(self.decode(only)),
                _ => Some(comp.to_er7(&self.enc)),
            };
        };
        non_empty(self.decode(comp.subcomponent(s)?))
    }

    /// What can be read of a MSH that lacks a required field (empty where absent): enough
    /// to address the acknowledgement that refuses the message.
    pub fn partial_msh(&self) -> Msh {
        let get = |p: &str| self.get(p).unwrap_or_default();
        Msh {
            sending_application: get("MSH-3.1"),
            sending_facility: get("MSH-4.1"),
            receiving_application: get("MSH-5.1"),
            receiving_facility: get("MSH-6.1"),
            message_type: get("MSH-9.1"),
            trigger: get("MSH-9.2"),
            control_id: get("MSH-10"),
            processing_id: get("MSH-11.1"),
            version: get("MSH-12.1"),
            accept_ack_type: get("MSH-15"),
            app_ack_type: get("MSH-16"),
            ..Msh::default()
        }
    }

    /// The typed MSH header. Fails when MSH-9.1, MSH-9.2 or MSH-10 is missing.
    pub fn msh(&self) -> Result<Msh, ParseError> {
        let seg = self.segment("MSH").ok_or(ParseError::NoMsh)?;
        let v = |field, comp| leaf(seg, &self.enc, field, 1, comp, 1);
        let message_type = non_empty(v(9, 1)).ok_or(ParseError::MissingField("MSH-9.1"))?;
        let trigger = non_empty(v(9, 2)).ok_or(ParseError::MissingField("MSH-9.2"))?;
        let control_id = non_empty(v(10, 1)).ok_or(ParseError::MissingField("MSH-10"))?;
        Ok(Msh {
            sending_application: v(3, 1),
            sending_application_universal_id: v(3, 2),
            sending_application_universal_id_type: v(3, 3),
            sending_facility: v(4, 1),
            sending_facility_universal_id: v(4, 2),
            sending_facility_universal_id_type: v(4, 3),
            receiving_application: v(5, 1),
            receiving_application_universal_id: v(5, 2),
            receiving_application_universal_id_type: v(5, 3),
            receiving_facility: v(6, 1),
            receiving_facility_universal_id: v(6, 2),
            receiving_facility_universal_id_type: v(6, 3),
            datetime: v(7, 1),
            message_type,
            trigger,
            structure: v(9, 3),
            control_id,
            processing_id: v(11, 1),
            version: v(12, 1),
            accept_ack_type: v(15, 1),
            app_ack_type: v(16, 1),
        })
    }

    /// The patient identifiers of the first PID segment, if there is one.
    pub fn pid(&self) -> Option<Pid> {
        let seg = self.segment("PID")?;
        let identifiers = seg
            .field(3)
            .map(|f| {
                f.repetitions
                    .iter()
                    .filter_map(|rep| {
                        let part = |comp: usize| {
                            rep.component(comp)
                                .and_then(|c| c.subcomponent(1))
                                .map(|raw| self.decode(raw))
                                .unwrap_or_default()
                        };
                        let id = non_empty(part(1))?;
                        Some(PatientId {
                            id,
                            assigning_authority: part(4),
                            id_type: part(5),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Pid { identifiers })
    }

    /// Every PRD (provider) segment, in order.
    pub fn prds(&self) -> Vec<Prd> {
        self.segments_named("PRD")
            .map(|seg| {
                let provider_ids = seg
                    .field(7)
                    .map(|f| {
                        f.repetitions
                            .iter()
                            .filter_map(|rep| {
                                let part = |comp: usize| {
                                    rep.component(comp)
                                        .and_then(|c| c.subcomponent(1))
                                        .map(|raw| self.decode(raw))
                                        .unwrap_or_default()
                                };
                                Some(ProviderId {
                                    id: non_empty(part(1))?,
                                    id_type: part(2),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Prd {
                    role: leaf(seg, &self.enc, 1, 1, 1, 1),
                    provider_ids,
                }
            })
            .collect()
    }
}

/// The MSH header, decoded. Application and facility fields are HD: the namespace id
/// (HD.1) in the plain field, HD.2 in `*_universal_id` and HD.3 in `*_universal_id_type`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Msh {
    /// MSH-3.1
    pub sending_application: String,
    /// MSH-3.2
    pub sending_application_universal_id: String,
    /// MSH-3.3
    pub sending_application_universal_id_type: String,
    /// MSH-4.1
    pub sending_facility: String,
    /// MSH-4.2 (the HPI-O in AU messages)
    pub sending_facility_universal_id: String,
    /// MSH-4.3 (e.g. `AUSHICPR`)
    pub sending_facility_universal_id_type: String,
    /// MSH-5.1
    pub receiving_application: String,
    /// MSH-5.2
    pub receiving_application_universal_id: String,
    /// MSH-5.3
    pub receiving_application_universal_id_type: String,
    /// MSH-6.1
    pub receiving_facility: String,
    /// MSH-6.2 (the HPI-O in AU messages)
    pub receiving_facility_universal_id: String,
    /// MSH-6.3
    pub receiving_facility_universal_id_type: String,
    /// MSH-7
    pub datetime: String,
    /// MSH-9.1, e.g. `REF`
    pub message_type: String,
    /// MSH-9.2, e.g. `I12`
    pub trigger: String,
    /// MSH-9.3, may be empty
    pub structure: String,
    /// MSH-10
    pub control_id: String,
    /// MSH-11.1
    pub processing_id: String,
    /// MSH-12.1
    pub version: String,
    /// MSH-15, may be empty
    pub accept_ack_type: String,
    /// MSH-16, may be empty
    pub app_ack_type: String,
}

impl Msh {
    /// Message type and trigger, e.g. `REF^I12`.
    pub fn message_code(&self) -> String {
        format!("{}^{}", self.message_type, self.trigger)
    }
}

/// The patient identifiers from PID-3 (repetitions with an empty id are skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pid {
    pub identifiers: Vec<PatientId>,
}

/// One PID-3 repetition (CX).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientId {
    /// CX.1
    pub id: String,
    /// CX.4.1
    pub assigning_authority: String,
    /// CX.5
    pub id_type: String,
}

impl Pid {
    /// The patient's IHI: the identifier typed `NI` whose assigning authority contains
    /// `AUSHIC`, else any 16-digit identifier starting with 800360. The check digit is not
    /// verified here.
    pub fn ihi(&self) -> Option<String> {
        self.identifiers
            .iter()
            .find(|p| p.id_type == "NI" && p.assigning_authority.contains("AUSHIC"))
            .or_else(|| {
                self.identifiers.iter().find(|p| {
                    p.id.len() == IHI_DIGITS
                        && p.id.starts_with(IHI_PREFIX)
                        && p.id.bytes().all(|b| b.is_ascii_digit())
                })
            })
            .map(|p| p.id.clone())
    }
}

/// One PRD segment: the provider's role and identifiers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prd {
    /// PRD-1.1, e.g. `RP` (referring provider) or `RT` (referred-to provider).
    pub role: String,
    /// PRD-7 repetitions with a non-empty id.
    pub provider_ids: Vec<ProviderId>,
}

/// One PRD-7 repetition (PI).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderId {
    /// PI.1
    pub id: String,
    /// PI.2, e.g. `HPII`, `NPII` or `UPIN`.
    pub id_type: String,
}

impl Prd {
    /// The first provider id of the given type.
    pub fn provider_id_of_type(&self, id_type: &str) -> Option<&str> {
        self.provider_ids
            .iter()
            .find(|p| p.id_type == id_type)
            .map(|p| p.id.as_str())
    }

    /// The practitioner's HPI-I: the first provider id typed `HPII` or `NPII`.
    pub fn hpii(&self) -> Option<&str> {
        self.provider_ids
            .iter()
            .find(|p| p.id_type == "HPII" || p.id_type == "NPII")
            .map(|p| p.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &str = "MSH|^~\\&|App^1.2.3^ISO|Fac^8003620000001011^AUSHICPR|Rcv|RFac|20250314||ORU^R01^ORU_R01|C1|P|2.4\rPID|1||A1^^^X^MR~8003608166690503^^^AUSHIC^NI||Name^Given\rOBX|1|FT|X||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g||||||F\rOBX|2|ST|Y||two\r";

    fn parse_ok(s: &str) -> Message {
        parse_str(s).expect("parses")
    }

    #[test]
    fn msh_numbering_follows_hl7() {
        let m = parse_ok(SIMPLE);
        assert_eq!(m.get("MSH-1").as_deref(), Some("|"));
        assert_eq!(m.get("MSH-2").as_deref(), Some("^~\\&"));
        assert_eq!(m.get("MSH-3").as_deref(), Some("App^1.2.3^ISO"));
        assert_eq!(m.get("MSH-3.2").as_deref(), Some("1.2.3"));
        assert_eq!(m.get("MSH-9").as_deref(), Some("ORU^R01^ORU_R01"));
        assert_eq!(m.get("MSH-9.1").as_deref(), Some("ORU"));
        assert_eq!(m.get("MSH-10").as_deref(), Some("C1"));
        assert_eq!(m.get("MSH-8"), None);
        assert_eq!(m.get("MSH-13"), None);
        let msh = m.segment("MSH").expect("msh");
        assert_eq!(
            msh.field(3)
                .and_then(|f| f.component(1))
                .and_then(|c| c.subcomponent(1)),
            Some("App")
        );
        assert!(msh.field(0).is_none());
    }

    #[test]
    fn other_segments_number_from_first_field_after_id() {
        let m = parse_ok(SIMPLE);
        assert_eq!(m.get("PID-1").as_deref(), Some("1"));
        assert_eq!(m.get("PID-3.1").as_deref(), Some("A1"));
        assert_eq!(m.get("PID-3(2).1").as_deref(), Some("8003608166690503"));
        assert_eq!(m.get("PID-3(2).5").as_deref(), Some("NI"));
        assert_eq!(m.get("PID-3(3).1"), None);
        assert_eq!(m.get("OBX(2)-5").as_deref(), Some("two"));
        assert_eq!(m.get("OBX(3)-5"), None);
        assert_eq!(m.segments_named("OBX").count(), 2);
        assert!(m.segment("ZZZ").is_none());
    }

    #[test]
    fn subcomponents_are_addressable() {
        let m = parse_ok("MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.4\rPRD|RT||||||id1&sub2^HPII\r");
        assert_eq!(m.get("PRD-7.1.1").as_deref(), Some("id1"));
        assert_eq!(m.get("PRD-7.1.2").as_deref(), Some("sub2"));
        assert_eq!(m.get("PRD-7.1").as_deref(), Some("id1&sub2"));
        assert_eq!(m.get("PRD-7.1.3"), None);
    }

    #[test]
    fn escapes_decode_on_access() {
        let m = parse_ok(SIMPLE);
        assert_eq!(m.get("OBX-5").as_deref(), Some("a|b^c&d~e\\f\ng"));
        let raw = m.segment("OBX").and_then(|s| s.raw(5, 1, 1, 1));
        assert_eq!(raw, Some("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g"));
    }

    #[test]
    fn hex_and_unknown_escapes() {
        let enc = Encoding::default();
        assert_eq!(enc.unescape("\\X48692C\\"), "Hi,");
        assert_eq!(enc.unescape("\\XC3A9\\"), "é");
        // Invalid UTF-8, odd length and non-hex are kept raw.
        assert_eq!(enc.unescape("\\XFF\\"), "\\XFF\\");
        assert_eq!(enc.unescape("\\X4\\"), "\\X4\\");
        assert_eq!(enc.unescape("\\XZZ\\"), "\\XZZ\\");
        assert_eq!(enc.unescape("\\H\\bold\\N\\"), "\\H\\bold\\N\\");
        assert_eq!(enc.unescape("tail\\F"), "tail\\F");
        assert_eq!(enc.unescape("C:\\dir\\file"), "C:\\dir\\file");
        assert_eq!(enc.unescape("\\\\"), "\\\\");
    }

    #[test]
    fn escape_round_trips_and_is_safe() {
        let enc = Encoding::default();
        let text = "a|b^c&d~e\\f\r\ng\u{b}h\u{1c}";
        let escaped = enc.escape(text);
        for bad in ['|', '^', '&', '~', '\r', '\n', '\u{b}', '\u{1c}'] {
            assert!(!escaped.contains(bad), "{bad:?} left in {escaped}");
        }
        assert_eq!(enc.unescape(&escaped), "a|b^c&d~e\\f\ng\u{b}h\u{1c}");
    }

    #[test]
    fn custom_separators_and_truncation_character() {
        let m = parse_ok("MSH#*@!$%#A*B#F#R#S#T#U#ADT*A01#C9#P#2.7\rPID#1##X!S!Y*Z\r");
        assert_eq!(m.enc.field, '#');
        assert_eq!(m.enc.component, '*');
        assert_eq!(m.enc.repetition, '@');
        assert_eq!(m.enc.escape, '!');
        assert_eq!(m.enc.subcomponent, '$');
        assert_eq!(m.enc.truncation, Some('%'));
        assert_eq!(m.get("MSH-2").as_deref(), Some("*@!$%"));
        assert_eq!(m.get("MSH-3.2").as_deref(), Some("B"));
        assert_eq!(m.get("PID-3.1").as_deref(), Some("X*Y"));
        assert_eq!(m.get("PID-3.2").as_deref(), Some("Z"));
        let msh = m.msh().expect("msh");
        assert_eq!(msh.message_code(), "ADT^A01");
        assert_eq!(msh.control_id, "C9");
    }

    #[test]
    fn line_endings_and_blank_lines_are_tolerated() {
        for sep in ["\r", "\n", "\r\n", "\r\r\n\n"] {
            let s =
                format!("\r\nMSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.4{sep}PID|1{sep}{sep}ZXY|q{sep}");
            let m = parse_ok(&s);
            let ids: Vec<&str> = m.segments.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(ids, ["MSH", "PID", "ZXY"], "separator {sep:?}");
        }
    }

    #[test]
    fn rejects_structural_problems() {
        assert_eq!(parse(b""), Err(ParseError::NoMsh));
        assert_eq!(parse(b"PID|1\r"), Err(ParseError::NoMsh));
        assert_eq!(parse(b"MSH"), Err(ParseError::MshTooShort));
        assert_eq!(parse(b"MSH|^~\\"), Err(ParseError::MshTooShort));
        assert!(matches!(
            parse(b"MSH|^~|A"),
            Err(ParseError::BadEncodingCharacters(_))
        ));
        assert!(matches!(
            parse(b"MSH|^~\\&#!|A"),
            Err(ParseError::BadEncodingCharacters(_))
        ));
        for bad in [
            &b"MSH|^^\\&|A"[..],
            b"MSH|A~\\&|A",
            b"MSH|^~\\||A",
            b"MSH|^~ &|A",
            b"MSH\xff^~\\&|A",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::BadEncodingCharacters(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse(b"MSH|^~\\&|A\rPI|1\r"),
            Err(ParseError::BadSegmentId { index: 2 })
        );
        assert_eq!(
            parse(b"MSH|^~\\&|A\rPID|1\rpid|1\r"),
            Err(ParseError::BadSegmentId { index: 3 })
        );
        assert_eq!(
            parse(b"MSH|^~\\&|A\rPIDX|1\r"),
            Err(ParseError::BadSegmentId { index: 2 })
        );
        assert_eq!(
            parse(b"MSH|^~\\&|A\rMSH|^~\\&|B\r"),
            Err(ParseError::UnexpectedMsh { index: 2 })
        );
    }

    #[test]
    fn not_utf8_names_the_offset() {
        let mut bytes = b"MSH|^~\\&|A\rPID|1||".to_vec();
        let offset = bytes.len();
        bytes.extend_from_slice(b"\xc3\x28\r");
        assert_eq!(parse(&bytes), Err(ParseError::NotUtf8 { offset }));
    }

    #[test]
    fn limits_are_enforced() {
        let mut at_max = String::from("MSH|^~\\&|A");
        for _ in 1..SEGMENTS_MAX {
            at_max.push_str("\rNTE|1");
        }
        assert_eq!(parse_ok(&at_max).segments.len(), SEGMENTS_MAX);
        at_max.push_str("\rNTE|1");
        assert_eq!(
            parse_str(&at_max),
            Err(ParseError::TooManySegments { max: SEGMENTS_MAX })
        );

        let fields_at_max = format!("MSH|^~\\&|A\rZFL{}", "|".repeat(FIELDS_MAX));
        assert_eq!(
            parse_ok(&fields_at_max).segments[1].fields.len(),
            FIELDS_MAX
        );
        let too_many = format!("MSH|^~\\&|A\rZFL{}", "|".repeat(FIELDS_MAX + 1));
        let err = parse_str(&too_many).expect_err("too many fields");
        assert_eq!(
            err,
            ParseError::TooManyFields {
                segment: "ZFL".into(),
                max: FIELDS_MAX
            }
        );

        let elements = format!("MSH|^~\\&|A\rZEL|{}", "^".repeat(ELEMENTS_MAX));
        assert_eq!(
            parse_str(&elements),
            Err(ParseError::TooManyElements { max: ELEMENTS_MAX })
        );
    }

    #[test]
    fn errors_do_not_quote_contents() {
        let err = parse(b"MSH|^~\\&|A\rPID|SECRETNAME\rbad|SECRETNAME\r").expect_err("bad id");
        assert!(!err.to_string().contains("SECRET"));
        assert!(!err.to_string().contains("bad"));
        let missing = parse_ok("MSH|^~\\&|SECRET|B|C|D|1||ADT^A01||P|2.4")
            .msh()
            .expect_err("no control id");
        assert_eq!(missing, ParseError::MissingField("MSH-10"));
        assert!(!missing.to_string().contains("SECRET"));
    }

    #[test]
    fn msh_requires_type_trigger_and_control_id() {
        let m = parse_ok("MSH|^~\\&|A|B|C|D|1||^A01|X|P|2.4");
        assert_eq!(m.msh(), Err(ParseError::MissingField("MSH-9.1")));
        let m = parse_ok("MSH|^~\\&|A|B|C|D|1||ADT|X|P|2.4");
        assert_eq!(m.msh(), Err(ParseError::MissingField("MSH-9.2")));
        let m = parse_ok("MSH|^~\\&|A|B|C|D|1||ADT^A01");
        assert_eq!(m.msh(), Err(ParseError::MissingField("MSH-10")));
    }

    #[test]
    fn malformed_paths_return_none() {
        let m = parse_ok(SIMPLE);
        for bad in [
            "",
            "PID",
            "PID-",
            "PID-0",
            "PID-3.0",
            "PID-3(0)",
            "PID-3(",
            "PID-3()",
            "PID-3.1.1.1",
            "PI-3",
            "PIDX-3",
            "PID-x",
            "PID-123456",
            "PID(0)-1",
        ] {
            assert_eq!(m.get(bad), None, "{bad}");
        }
    }

    #[test]
    fn pid_and_ihi() {
        let m = parse_ok(SIMPLE);
        let pid = m.pid().expect("pid");
        assert_eq!(pid.identifiers.len(), 2);
        assert_eq!(pid.identifiers[0].assigning_authority, "X");
        assert_eq!(pid.ihi().as_deref(), Some("8003608166690503"));

        // Fallback: a 16-digit 800360 id without the NI/AUSHIC typing.
        let m =
            parse_ok("MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.4\rPID|1||123^^^H^MR~8003608166690503\r");
        assert_eq!(
            m.pid().and_then(|p| p.ihi()).as_deref(),
            Some("8003608166690503")
        );
        // NI from another authority is not an IHI, nor is a short 800360 id.
        let m = parse_ok("MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.4\rPID|1||999^^^OTHER^NI~800360\r");
        assert_eq!(m.pid().and_then(|p| p.ihi()), None);
        let m = parse_ok("MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.4\r");
        assert!(m.pid().is_none());
    }

    #[test]
    fn mutated_samples_never_panic() {
        // A fixed linear congruential generator keeps this deterministic.
        let mut state: u64 = 0x5EA1_9057;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        let specials = b"|^~\\&#\r\n\x0b\x1cMSH0";
        let mut parsed = 0;
        for sample in [
            crate::samples::REF_I12,
            crate::samples::ORU_R01,
            crate::samples::MDM_T02,
        ] {
            for _ in 0..300 {
                let mut bytes = sample.as_bytes().to_vec();
                for _ in 0..(1 + next() % 8) {
                    let at = next() % bytes.len();
                    match next() % 3 {
                        0 => bytes[at] = specials[next() % specials.len()],
                        1 => bytes[at] = (next() % 256) as u8,
                        _ => bytes.truncate(at.max(1)),
                    }
                }
                if let Ok(m) = parse(&bytes) {
                    parsed += 1;
                    let _ = m.msh();
                    let _ = m.pid().map(|p| p.ihi());
                    let _ = m.prds();
                    for path in [
                        "MSH-9",
                        "PID-3(2).4.2",
                        "OBX(3)-5",
                        "PRD(2)-7(1).1",
                        "MSH-2.1",
                    ] {
                        let _ = m.get(path);
                    }
                }
            }
        }
        assert!(parsed > 0, "some mutations still parse");
    }

    #[test]
    fn prd_roles_and_ids() {
        let m = parse_ok(
            "MSH|^~\\&|A|B|C|D|1||REF^I12|X|P|2.4\rPRD|RP||||||1A^UPIN\rPRD|RT^Referred to||||||9B^UPIN~~8003610000001012^HPII\r",
        );
        let prds = m.prds();
        assert_eq!(prds.len(), 2);
        assert_eq!(prds[0].role, "RP");
        assert_eq!(prds[0].hpii(), None);
        assert_eq!(prds[1].role, "RT");
        assert_eq!(prds[1].provider_ids.len(), 2);
        assert_eq!(prds[1].hpii(), Some("8003610000001012"));
        assert_eq!(prds[1].provider_id_of_type("UPIN"), Some("9B"));
    }
}
