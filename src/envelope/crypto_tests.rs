//! Known answers computed outside this crate, so a wrong KDF cannot pass by agreeing with itself.
use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn seq(start: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| start + i as u8).collect()
}

const AAD: &[u8] = b"/registry/secrets/default/kat";
const PLAINTEXT: &[u8] = br#"{"kind":"Secret","apiVersion":"v1","data":{"k":"dmFsdWU="}}"#;

// Computed with PyPI `cryptography` 50.0.2 (HKDFExpand, AESGCM), independent of RustCrypto:
//   seed = bytes(range(32)); info = bytes(0xa0+i for i in range(32));
//   nonce = bytes(0x50+i for i in range(12)); aad = b"/registry/secrets/default/kat"
//   dek = HKDFExpand(SHA256(), 32, info).derive(seed)
//   seed_data = info + nonce + AESGCM(dek).encrypt(nonce, PLAINTEXT, aad)
//   legacy_data = nonce + AESGCM(bytes(0x70+i for i in range(32))).encrypt(nonce, PLAINTEXT, aad)
// dek equals HMAC-SHA256(seed, info || 0x01), i.e. T(1) of RFC 5869 section 2.3.
const KAT_DEK: &str = "9dd590e54ceb1bafffcf5b84ee3cde0755f34d81a3f392a158bc3a75062372a2";
// HKDF with Extract (salt = none) gives this instead; kube-apiserver does NOT do that.
const KAT_EXTRACT_THEN_EXPAND: &str =
    "c13edf88ec1612b3acdf5e6ed5860909c3d3bf3cdc33d9c6f8c88c29b93cff2f";
const KAT_SEED_DATA: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf505152535455565758595a5b6799eae3b81bd951ff73839ef4258e36fc9ee321954e70b721326782f75cf22e9831daaea6552e24d1f70a25b0883f8392eb8014c538419e6be0b46a4018227544c77ec2e43b1c4caa2374";
const KAT_LEGACY_DATA: &str = "505152535455565758595a5b8061b93e2b65945177495202c289cd807e42f7dd7ead2a99a4e57826837e8fbe97c26b4a25d0300c3dd2f21467c9cb5b1566cc78b19b7372ec6dab787e25074678d524012907908d2cb489";

fn info() -> [u8; INFO_BYTES] {
    seq(0xa0, 32).try_into().expect("32")
}
fn nonce() -> [u8; NONCE_BYTES] {
    seq(0x50, 12).try_into().expect("12")
}

#[test]
fn kdf_is_hkdf_expand_only_rfc5869_test_case_1() {
    // RFC 5869 A.1: PRK and OKM. Using the PRK as the seed must give the OKM's first 32 bytes.
    let prk = hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5");
    let info = hex("f0f1f2f3f4f5f6f7f8f9");
    let dek = derive_dek(&prk, &info).expect("derive");
    assert_eq!(
        dek.as_slice(),
        hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf")
    );
}

#[test]
fn kdf_matches_an_independent_implementation_and_not_extract_then_expand() {
    let dek = derive_dek(&seq(0, 32), &info()).expect("derive");
    assert_eq!(dek.as_slice(), hex(KAT_DEK));
    assert_ne!(dek.as_slice(), hex(KAT_EXTRACT_THEN_EXPAND));
}

#[test]
fn seed_mode_known_answer_both_ways() {
    let sealed = seal_with_seed(&seq(0, 32), &info(), &nonce(), AAD, PLAINTEXT).expect("seal");
    assert_eq!(sealed, hex(KAT_SEED_DATA));
    let opened = open_with_seed(&seq(0, 32), &hex(KAT_SEED_DATA), AAD).expect("open");
    assert_eq!(opened.as_slice(), PLAINTEXT);
}

#[test]
fn legacy_key_mode_known_answer_both_ways() {
    let key = seq(0x70, 32);
    let sealed = seal_with_key(&key, &nonce(), AAD, PLAINTEXT).expect("seal");
    assert_eq!(sealed, hex(KAT_LEGACY_DATA));
    let opened = open_with_key(&key, &hex(KAT_LEGACY_DATA), AAD).expect("open");
    assert_eq!(opened.as_slice(), PLAINTEXT);
}

#[test]
fn every_altered_byte_and_a_wrong_etcd_key_fail_authentication() {
    let data = hex(KAT_SEED_DATA);
    for i in 0..data.len() {
        let mut d = data.clone();
        d[i] ^= 0x01;
        assert!(
            matches!(
                open_with_seed(&seq(0, 32), &d, AAD),
                Err(EnvelopeError::Authentication)
            ),
            "flipped byte {i} must not decrypt"
        );
    }
    let err = open_with_seed(&seq(0, 32), &data, b"/registry/secrets/default/other").unwrap_err();
    assert!(matches!(err, EnvelopeError::Authentication));
    assert_eq!(err.failure(), crate::envelope::Failure::DoesNotDecrypt);
    let err = open_with_key(&seq(0x70, 32), &hex(KAT_LEGACY_DATA), b"/x").unwrap_err();
    assert!(matches!(err, EnvelopeError::Authentication));
    let mut wrong_seed = seq(0, 32);
    wrong_seed[0] = 0xff;
    assert!(open_with_seed(&wrong_seed, &data, AAD).is_err());
}

#[test]
fn short_data_and_bad_dek_source_lengths_are_named() {
    let err = open_with_seed(&seq(0, 32), &[0u8; 59], AAD).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::DataTooShort {
                len: 59,
                need: 60,
                ..
            }
        ),
        "{err}"
    );
    let err = open_with_key(&seq(0, 32), &[0u8; 27], AAD).unwrap_err();
    assert!(
        matches!(err, EnvelopeError::DataTooShort { need: 28, .. }),
        "{err}"
    );
    let err = open_with_seed(&seq(0, 16), &hex(KAT_SEED_DATA), AAD).unwrap_err();
    assert!(
        matches!(err, EnvelopeError::DekSourceLength { len: 16, .. }),
        "{err}"
    );
    let err = open_with_key(&seq(0, 16), &hex(KAT_LEGACY_DATA), AAD).unwrap_err();
    assert!(
        matches!(err, EnvelopeError::DekSourceLength { len: 16, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("32 bytes"), "{err}");
}

#[test]
fn dek_source_type_wire_values_and_names() {
    assert_eq!(DekSourceType::from_wire(0), Some(DekSourceType::AesGcmKey));
    assert_eq!(
        DekSourceType::from_wire(1),
        Some(DekSourceType::HkdfSha256XNonceAesGcmSeed)
    );
    assert_eq!(DekSourceType::from_wire(2), None);
    assert_eq!(
        DekSourceType::HkdfSha256XNonceAesGcmSeed.to_string(),
        "HKDF_SHA256_XNONCE_AES_GCM_SEED (1)"
    );
    assert_eq!(
        crate::pb::EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed as i32,
        DekSourceType::HkdfSha256XNonceAesGcmSeed.wire()
    );
}
