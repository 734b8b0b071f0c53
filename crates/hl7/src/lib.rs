//! HL7 v2 for sealpost: ER7 parsing with typed views of the routing fields ([`er7`]),
//! acknowledgement building and reading ([`ack`]), MLLP framing for tokio ([`mllp`]) and
//! AU-profile sample messages for tests ([`samples`]). No I/O beyond the codec and no
//! logging: nothing here can leak message contents.

pub mod ack;
pub mod er7;
pub mod mllp;
pub mod samples;

pub use ack::{AckCode, AckError, AckMode, Outcome, build_ack, parse_ack};
pub use er7::{Message, Msh, ParseError, parse, parse_str};
pub use mllp::{MllpCodec, MllpError};
