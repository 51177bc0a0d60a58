//! The subject common name (CN) of an X.509 certificate, for using a verified client
//! certificate's identity as the MQTT user name (Mosquitto's `use_identity_as_username`).
//!
//! A minimal DER walk (certificate → tbsCertificate → subject → first CN attribute) instead of a
//! full X.509 parser: the TLS layer has already verified the certificate chain, this only reads
//! one field, and it rejects anything it does not understand rather than guessing.
//!
//! ```text
//! Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
//!     signature, issuer Name, validity, subject Name, ... }, ... }
//! Name ::= SEQUENCE OF SET OF SEQUENCE { type OBJECT IDENTIFIER, value ANY }
//! ```

/// DER encoding of the OID 2.5.4.3 (id-at-commonName), contents only.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;

/// Splits one DER TLV off `input`: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers do not occur in the fields read here
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, contents, rest) = tlv(input)?;
    (t == tag).then_some((contents, rest))
}

/// Decodes a directory string value.
fn string_value(tag: u8, v: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, TeletexString (taken as Latin-1 when not UTF-8)
        0x0c | 0x13 | 0x16 => String::from_utf8(v.to_vec()).ok(),
        0x14 => Some(
            String::from_utf8(v.to_vec())
                .unwrap_or_else(|_| v.iter().map(|b| *b as char).collect()),
        ),
        // BMPString: UCS-2 big-endian.
        0x1e if v.len().is_multiple_of(2) => {
            let units: Vec<u16> = v
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        // UniversalString: UCS-4 big-endian.
        0x1c if v.len().is_multiple_of(4) => v
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// The first common name of the certificate's subject, if it has one and it can be read.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    // Optional explicit version.
    if let Some((CONTEXT_0, _, after)) = tlv(rest) {
        rest = after;
    }
    // serialNumber, signature, issuer, validity: skipped.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (mut subject, _) = expect(rest, SEQUENCE)?;
    while !subject.is_empty() {
        let (mut rdn, next) = expect(subject, SET)?;
        subject = next;
        while !rdn.is_empty() {
            let (attr, next) = expect(rdn, SEQUENCE)?;
            rdn = next;
            let (oid, value) = expect(attr, OID)?;
            if oid == OID_CN {
                let (tag, v, _) = tlv(value)?;
                return string_value(tag, v);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert_with(cn: Option<&str>, org: bool) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["client.test".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if org {
            params
                .distinguished_name
                .push(DnType::OrganizationName, "Starling Tests");
        }
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_common_name() {
        assert_eq!(
            subject_common_name(&cert_with(Some("alice"), true)).as_deref(),
            Some("alice")
        );
        assert_eq!(subject_common_name(&cert_with(None, true)), None);
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        let good = cert_with(Some("x"), false);
        for n in 0..good.len() {
            let _ = subject_common_name(&good[..n]);
        }
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_printable_common_name(cn in "[a-zA-Z0-9 ._@é-]{1,40}") {
            prop_assert_eq!(subject_common_name(&cert_with(Some(&cn), false)), Some(cn));
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = subject_common_name(&bytes);
        }
    }
}
