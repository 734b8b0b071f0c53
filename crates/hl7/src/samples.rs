//! Sample HL7 v2 messages in the Australian profiles, for tests here and in other crates:
//! a referral (REF^I12), a pathology result (ORU^R01) and a clinical document (MDM^T02),
//! plus named malformed inputs. All identifiers are made up but carry valid Luhn check
//! digits (HPI-Os 8003620000001011 and 8003620000001037, HPI-Is 8003610000001012 and
//! 8003610000001020, IHI 8003608166690503); the patient is plainly fictional.

/// A referral from Sunrise Medical Centre (HPI-O 8003620000001011) to Harbour Hospital
/// (HPI-O 8003620000001037): the referred-to provider (PRD|RT) carries HPI-I
/// 8003610000001012. Enhanced acknowledgement mode (MSH-15 `AL`, MSH-16 `NE`).
pub const REF_I12: &str = concat!(
    "MSH|^~\\&|ExamplePMS^^L|Sunrise Medical Centre^8003620000001011^AUSHICPR|cardiology|Harbour Hospital^8003620000001037^AUSHICPR|20250314093000+1000||REF^I12^REF_I12|SUN20250314093000001|P|2.4^AUS&&ISO3166_1|||AL|NE|AUS\r",
    "RF1|A^Accepted^HL70283|R^Routine^HL70280|CAR^Cardiology^HL70281|||REF0001^Sunrise Medical Centre|20250314|20260314\r",
    "PRD|RP|Example^Alice^^^Dr|1 Example Street^^Sampletown^NSW^2000^AU||^WPN^PH^^^^^^^^^0290000000||8003610000001020^HPII~9999991A^UPIN\r",
    "PRD|RT|Specimen^Bob^^^Dr|2 Harbour Road^^Seaside^NSW^2001^AU||^WPN^PH^^^^^^^^^0290000001||8003610000001012^HPII~9999992B^UPIN\r",
    "PID|1||8003608166690503^^^AUSHIC^NI~MRN0001^^^Sunrise Medical Centre&8003620000001011&AUSHICPR^MR||SAMPLE^Fictional^Test^^^^L||19800101|F|||1 Fictional Lane^^Sampletown^NSW^2000^AU\r",
    "DG1|1||R07.4^Chest pain, unspecified^I10AM\r",
    "OBR|1|REF0001^Sunrise Medical Centre||REFLET^Referral letter^L|||20250314093000+1000\r",
    "OBX|1|FT|REASON^Reason for referral^L||Exertional chest pain for 3 weeks.\\.br\\Please assess \\T\\ advise.||||||F\r",
);

/// Point-of-care results (HbA1c, cholesterol) sent by Sunrise Medical Centre to the
/// cardiology service of Harbour Hospital; original acknowledgement mode (MSH-15 and
/// MSH-16 empty).
pub const ORU_R01: &str = concat!(
    "MSH|^~\\&|ExamplePMS|Sunrise Medical Centre^8003620000001011^AUSHICPR|cardiology|Harbour Hospital^8003620000001037^AUSHICPR|20250314101500+1000||ORU^R01^ORU_R01|SUN20250314101500042|P|2.4^AUS&&ISO3166_1|||||AUS\r",
    "PID|1||8003608166690503^^^AUSHIC^NI~MRN0001^^^Sunrise Medical Centre&8003620000001011&AUSHICPR^MR||SAMPLE^Fictional^Test^^^^L||19800101|F\r",
    "PV1|1|O\r",
    "ORC|RE|ORD0001^Sunrise Medical Centre|POC0001^Sunrise Medical Centre||CM\r",
    "OBR|1|ORD0001^Sunrise Medical Centre|POC0001^Sunrise Medical Centre|POCT^Point of care tests^L|||20250314100000+1000|||||||||||||||20250314101000+1000||CH|F\r",
    "OBX|1|NM|4548-4^HbA1c^LN||6.1|%^%^UCUM|4.0-6.0|H|||F\r",
    "OBX|2|NM|2093-3^Total cholesterol^LN||5.2|mmol/L^mmol/L^UCUM|<5.5|N|||F\r",
    "OBX|3|FT|NOTE^Comment^L||Point of care results for the cardiology review.\\.br\\HbA1c slightly raised \\T\\ repeat in 3 months.||||||F\r",
);

/// A consultation note from Sunrise Medical Centre to Harbour Hospital with a TXA and a
/// formatted-text OBX; enhanced acknowledgement mode (MSH-15 `NE`, MSH-16 `AL`).
pub const MDM_T02: &str = concat!(
    "MSH|^~\\&|ExamplePMS|Sunrise Medical Centre^8003620000001011^AUSHICPR|cardiology|Harbour Hospital^8003620000001037^AUSHICPR|20250314110000+1000||MDM^T02^MDM_T02|SUN20250314110000007|P|2.4^AUS&&ISO3166_1|||NE|AL|AUS\r",
    "EVN|T02|20250314110000+1000\r",
    "PID|1||8003608166690503^^^AUSHIC^NI||SAMPLE^Fictional^Test^^^^L||19800101|F\r",
    "PV1|1|O\r",
    "TXA|1|CN^Consultation note^HL70270|FT|20250314105500+1000|8003610000001020^Example^Alice^^^Dr^^^AUSHICPR^L^^^NPII|||||||DOC20250314-0007^Sunrise Medical Centre|||||AU\r",
    "OBX|1|FT|11488-4^Consultation note^LN||Reviewed today.\\.br\\Blood pressure well controlled \\T\\ stable.\\.br\\Review in 6 months.||||||F\r",
);

/// Named malformed inputs and what they exercise. `missing_control_id` and
/// `missing_message_type` parse, but fail in `Message::msh`.
pub fn malformed() -> Vec<(&'static str, Vec<u8>)> {
    let mut not_utf8 =
        b"MSH|^~\\&|ExamplePMS|Sunrise|SealpostInbox|Harbour|20250314||ADT^A08|C1|P|2.4\rPID|1||"
            .to_vec();
    not_utf8.extend_from_slice(&[0xC3, 0x28]);
    not_utf8.extend_from_slice(b"\r");
    vec![
        ("no_msh", b"PID|1||8003608166690503^^^AUSHIC^NI\r".to_vec()),
        (
            "bad_encoding_characters",
            b"MSH|^^\\&|ExamplePMS|Sunrise|SealpostInbox|Harbour|20250314||ADT^A08|C1|P|2.4\r"
                .to_vec(),
        ),
        ("binary_garbage", (0..=u8::MAX).collect()),
        ("truncated_msh", b"MSH|^~".to_vec()),
        ("not_utf8", not_utf8),
        (
            "missing_control_id",
            b"MSH|^~\\&|ExamplePMS|Sunrise|SealpostInbox|Harbour|20250314||REF^I12^REF_I12||P|2.4\r"
                .to_vec(),
        ),
        (
            "missing_message_type",
            b"MSH|^~\\&|ExamplePMS|Sunrise|SealpostInbox|Harbour|20250314|||C2|P|2.4\r".to_vec(),
        ),
    ]
}

/// Largest sample message, in bytes.
pub const SAMPLE_BYTES_MAX: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::er7::{ParseError, parse, parse_str};

    fn luhn_valid(digits: &str) -> bool {
        let mut sum = 0;
        for (i, c) in digits.bytes().rev().enumerate() {
            let mut d = u32::from(c - b'0');
            if i % 2 == 1 {
                d *= 2;
                if d > 9 {
                    d -= 9;
                }
            }
            sum += d;
        }
        digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_digit()) && sum % 10 == 0
    }

    #[test]
    fn luhn_helper_can_fail() {
        assert!(luhn_valid("8003608166690503"));
        assert!(!luhn_valid("8003608166690504"));
        assert!(!luhn_valid("800360816669050"));
    }

    #[test]
    fn samples_are_small_and_cr_terminated() {
        for s in [REF_I12, ORU_R01, MDM_T02] {
            assert!(s.len() < SAMPLE_BYTES_MAX, "{} bytes", s.len());
            assert!(s.ends_with('\r'));
            assert!(!s.contains('\n'));
        }
    }

    #[test]
    fn ref_i12() {
        let m = parse_str(REF_I12).expect("parses");
        let msh = m.msh().expect("msh");
        assert_eq!(msh.message_code(), "REF^I12");
        assert_eq!(msh.structure, "REF_I12");
        assert_eq!(msh.control_id, "SUN20250314093000001");
        assert_eq!(msh.sending_application, "ExamplePMS");
        assert_eq!(msh.sending_facility, "Sunrise Medical Centre");
        assert_eq!(msh.sending_facility_universal_id, "8003620000001011");
        assert_eq!(msh.sending_facility_universal_id_type, "AUSHICPR");
        assert_eq!(msh.receiving_facility, "Harbour Hospital");
        assert_eq!(msh.receiving_facility_universal_id, "8003620000001037");
        assert_eq!(msh.datetime, "20250314093000+1000");
        assert_eq!(msh.processing_id, "P");
        assert_eq!(msh.version, "2.4");
        assert_eq!(msh.accept_ack_type, "AL");
        assert_eq!(msh.app_ack_type, "NE");
        let pid = m.pid().expect("pid");
        assert_eq!(pid.ihi().as_deref(), Some("8003608166690503"));
        assert_eq!(pid.identifiers.len(), 2);
        assert_eq!(
            pid.identifiers[1].assigning_authority,
            "Sunrise Medical Centre"
        );
        assert_eq!(pid.identifiers[1].id_type, "MR");
        let prds = m.prds();
        let roles: Vec<&str> = prds.iter().map(|p| p.role.as_str()).collect();
        assert_eq!(roles, ["RP", "RT"]);
        let rt = prds.iter().find(|p| p.role == "RT").expect("RT");
        assert_eq!(rt.hpii(), Some("8003610000001012"));
        assert_eq!(rt.provider_ids[0].id, "8003610000001012");
        assert_eq!(rt.provider_ids[0].id_type, "HPII");
        assert_eq!(rt.provider_id_of_type("UPIN"), Some("9999992B"));
        assert_eq!(
            m.get("OBX-5").as_deref(),
            Some("Exertional chest pain for 3 weeks.\nPlease assess & advise.")
        );
    }

    #[test]
    fn oru_r01() {
        let m = parse_str(ORU_R01).expect("parses");
        let msh = m.msh().expect("msh");
        assert_eq!(msh.message_code(), "ORU^R01");
        assert_eq!(msh.control_id, "SUN20250314101500042");
        assert_eq!(msh.sending_facility_universal_id, "8003620000001011");
        assert_eq!(msh.receiving_facility_universal_id, "8003620000001037");
        assert_eq!(msh.receiving_application, "cardiology");
        assert_eq!(msh.accept_ack_type, "");
        assert_eq!(msh.app_ack_type, "");
        assert_eq!(
            m.pid().and_then(|p| p.ihi()).as_deref(),
            Some("8003608166690503")
        );
        assert_eq!(m.get("OBR-4.2").as_deref(), Some("Point of care tests"));
        assert_eq!(m.get("OBR-24").as_deref(), Some("CH"));
        assert_eq!(m.get("OBR-25").as_deref(), Some("F"));
        assert_eq!(m.segments_named("OBX").count(), 3);
        assert_eq!(m.get("OBX(1)-5").as_deref(), Some("6.1"));
        assert_eq!(m.get("OBX(2)-3.2").as_deref(), Some("Total cholesterol"));
        assert_eq!(m.get("OBX(3)-11").as_deref(), Some("F"));
        assert_eq!(m.get("OBX(2)-7").as_deref(), Some("<5.5"));
        assert_eq!(
            m.get("OBX(3)-5").as_deref(),
            Some(
                "Point of care results for the cardiology review.\nHbA1c slightly raised & repeat in 3 months."
            )
        );
        assert!(m.prds().is_empty());
    }

    #[test]
    fn mdm_t02() {
        let m = parse_str(MDM_T02).expect("parses");
        let msh = m.msh().expect("msh");
        assert_eq!(msh.message_code(), "MDM^T02");
        assert_eq!(msh.control_id, "SUN20250314110000007");
        assert_eq!(msh.accept_ack_type, "NE");
        assert_eq!(msh.app_ack_type, "AL");
        assert_eq!(
            m.pid().and_then(|p| p.ihi()).as_deref(),
            Some("8003608166690503")
        );
        assert_eq!(m.get("TXA-2.1").as_deref(), Some("CN"));
        assert_eq!(m.get("TXA-5.13").as_deref(), Some("NPII"));
        assert_eq!(m.get("TXA-12.1").as_deref(), Some("DOC20250314-0007"));
        assert_eq!(m.get("TXA-17").as_deref(), Some("AU"));
        assert_eq!(
            m.get("OBX-5").as_deref(),
            Some("Reviewed today.\nBlood pressure well controlled & stable.\nReview in 6 months.")
        );
    }

    #[test]
    fn sample_identifiers_have_valid_check_digits() {
        for (sample, field) in [
            (REF_I12, "MSH-4.2"),
            (REF_I12, "MSH-6.2"),
            (REF_I12, "PID-3.1"),
            (REF_I12, "PRD(1)-7(1).1"),
            (REF_I12, "PRD(2)-7.1"),
            (ORU_R01, "MSH-4.2"),
            (ORU_R01, "MSH-6.2"),
            (MDM_T02, "TXA-5.1"),
        ] {
            let m = parse_str(sample).expect("parses");
            let id = m.get(field).expect(field);
            assert!(luhn_valid(&id), "{field} = {id}");
            let prefix = &id[..6];
            assert!(["800360", "800361", "800362"].contains(&prefix), "{field}");
        }
    }

    #[test]
    fn malformed_inputs_fail_as_expected() {
        let inputs = malformed();
        let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "no_msh",
                "bad_encoding_characters",
                "binary_garbage",
                "truncated_msh",
                "not_utf8",
                "missing_control_id",
                "missing_message_type"
            ]
        );
        for (name, bytes) in inputs {
            let result = parse(&bytes).and_then(|m| m.msh());
            match name {
                "no_msh" | "binary_garbage" => assert_eq!(result, Err(ParseError::NoMsh), "{name}"),
                "bad_encoding_characters" => assert!(
                    matches!(result, Err(ParseError::BadEncodingCharacters(_))),
                    "{name}: {result:?}"
                ),
                "truncated_msh" => assert_eq!(result, Err(ParseError::MshTooShort)),
                "not_utf8" => {
                    let offset = bytes.iter().position(|&b| b == 0xC3).expect("bad byte");
                    assert_eq!(result, Err(ParseError::NotUtf8 { offset }));
                }
                "missing_control_id" => {
                    assert!(parse(&bytes).is_ok(), "parses");
                    assert_eq!(result, Err(ParseError::MissingField("MSH-10")));
                }
                "missing_message_type" => {
                    assert!(parse(&bytes).is_ok(), "parses");
                    assert_eq!(result, Err(ParseError::MissingField("MSH-9.1")));
                }
                other => panic!("untested malformed input {other}"),
            }
        }
    }
}
