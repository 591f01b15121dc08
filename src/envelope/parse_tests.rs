use super::*;
use crate::envelope::crypto::{seal_with_key, seal_with_seed};
use crate::envelope::Failure;

const NAME: &str = "openbao-kms";

fn object() -> pb::EncryptedObject {
    pb::EncryptedObject {
        encrypted_data: vec![1; 60],
        key_id: "obkms1-abc".into(),
        encrypted_dek_source: b"vault:v1:xyz".to_vec(),
        annotations: [("key-version.kms.openbao.org".to_owned(), b"1".to_vec())].into(),
        encrypted_dek_source_type: 1,
    }
}

fn invalid_field(o: &pb::EncryptedObject) -> &'static str {
    match validate(o) {
        Err(EnvelopeError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn classify_sorts_plaintext_other_schemes_and_other_providers() {
    let secret = b"{\"kind\":\"Secret\",\"data\":{\"password\":\"aHVudGVyMg==\"}}";
    let err = classify(secret, NAME).unwrap_err();
    assert_eq!(err.failure(), Failure::NotEncrypted);
    assert!(err.to_string().contains("JSON"), "{err}");
    assert!(
        !err.to_string().contains("aHVudGVyMg"),
        "never echoes plaintext: {err}"
    );
    let err = classify(b"k8s\x00\x0a\x0d/v1, Kind=Secret", NAME).unwrap_err();
    assert!(err.to_string().contains("Kubernetes protobuf"), "{err}");
    assert_eq!(
        classify(b"", NAME).unwrap_err().failure(),
        Failure::NotEncrypted
    );

    let err = classify(b"k8s:enc:aescbc:v1:key1:\x00\x01secret", NAME).unwrap_err();
    assert_eq!(err.failure(), Failure::OtherProvider);
    assert!(
        err.to_string().contains("\"k8s:enc:aescbc:v1:key1:\""),
        "{err}"
    );
    let err = classify(b"k8s:enc:kms:v1:old-plugin:\x00\x00", NAME).unwrap_err();
    assert!(
        err.to_string().contains("k8s:enc:kms:v1:old-plugin:"),
        "{err}"
    );

    let err = classify(b"k8s:enc:kms:v2:other-kms:\x0a\x01", NAME).unwrap_err();
    assert!(
        matches!(&err, EnvelopeError::OtherProvider { found, .. } if found == "other-kms"),
        "{err:?}"
    );
    // A name that is a prefix of ours (or ours a prefix of it) is still another provider.
    let err = classify(b"k8s:enc:kms:v2:openbao:\x0a", NAME).unwrap_err();
    assert_eq!(err.failure(), Failure::OtherProvider);
    let err = classify(b"k8s:enc:kms:v2:openbao-kms-2:\x0a", NAME).unwrap_err();
    assert_eq!(err.failure(), Failure::OtherProvider);
    let err = classify(b"k8s:enc:kms:v2:no-colon-ever", NAME).unwrap_err();
    assert_eq!(err.failure(), Failure::Malformed);

    assert_eq!(
        classify(b"k8s:enc:kms:v2:openbao-kms:BODY", NAME).expect("ours"),
        b"BODY"
    );
    for bad in ["", "a:b"] {
        assert_eq!(
            classify(b"x", bad).unwrap_err().failure(),
            Failure::BadArgument
        );
    }
}

#[test]
fn validation_mirrors_kube_apiserver() {
    assert_eq!(
        validate(&object()).expect("valid"),
        DekSourceType::HkdfSha256XNonceAesGcmSeed
    );
    let mut o = object();
    o.encrypted_dek_source_type = 0;
    assert_eq!(validate(&o).expect("valid"), DekSourceType::AesGcmKey);

    let mut o = object();
    o.encrypted_dek_source_type = 2;
    assert_eq!(invalid_field(&o), "encryptedDEKSourceType");
    let mut o = object();
    o.encrypted_data.clear();
    assert_eq!(invalid_field(&o), "encryptedData");
    let mut o = object();
    o.encrypted_dek_source.clear();
    assert_eq!(invalid_field(&o), "encryptedDEKSource");
    let mut o = object();
    o.encrypted_dek_source = vec![b'a'; 1024];
    validate(&o).expect("1024 bytes is allowed");
    o.encrypted_dek_source.push(b'a');
    assert_eq!(invalid_field(&o), "encryptedDEKSource");
    let mut o = object();
    o.key_id.clear();
    assert_eq!(invalid_field(&o), "keyID");
    o.key_id = "k".repeat(1024);
    validate(&o).expect("1024 bytes is allowed");
    o.key_id.push('k');
    assert_eq!(invalid_field(&o), "keyID");

    for bad in [
        "nodot",
        "Upper.example.org",
        "has/slash.example.org",
        "-lead.example.org",
        "trail-.example.org",
        "double..dot.org",
        "under_score.example.org",
        "",
    ] {
        let mut o = object();
        o.annotations.insert(bad.into(), b"x".to_vec());
        assert_eq!(invalid_field(&o), "annotations", "key {bad:?}");
    }
    for good in ["a.b", "key-version.kms.openbao.org", "x1.y2.", "0.9"] {
        let mut o = object();
        o.annotations.insert(good.into(), b"x".to_vec());
        validate(&o).unwrap_or_else(|e| panic!("{good:?} should be valid: {e}"));
    }
    let mut o = object();
    o.annotations.clear();
    o.annotations
        .insert("big.example.org".into(), vec![0; 32 * 1024 - 15]);
    validate(&o).expect("exactly 32 KiB of keys and values is allowed");
    o.annotations.insert("b.c".into(), vec![]);
    assert_eq!(invalid_field(&o), "annotations");
}

#[test]
fn encode_parse_round_trip_and_open_in_both_modes() {
    let key = b"/registry/secrets/default/demo";
    let seed = [3u8; 32];
    let mut o = object();
    o.encrypted_data = seal_with_seed(&seed, &[4; 32], &[5; 12], key, b"hello").expect("seal");
    let raw = encode(NAME, &o).expect("encode");
    assert!(raw.starts_with(b"k8s:enc:kms:v2:openbao-kms:"));
    let env = Envelope::parse(&raw, NAME).expect("parse");
    assert_eq!(env.key_id, "obkms1-abc");
    assert_eq!(env.to_bytes().expect("re-encode"), raw);
    assert_eq!(env.open(&seed, key).expect("open").as_slice(), b"hello");
    assert_eq!(
        env.open(&seed, b"/registry/secrets/default/other")
            .unwrap_err()
            .failure(),
        Failure::DoesNotDecrypt
    );

    let dek = [6u8; 32];
    o.encrypted_dek_source_type = 0;
    o.encrypted_data = seal_with_key(&dek, &[7; 12], key, b"legacy").expect("seal");
    let env = Envelope::parse(&encode(NAME, &o).expect("encode"), NAME).expect("parse");
    assert_eq!(env.dek_source_type, DekSourceType::AesGcmKey);
    assert_eq!(env.open(&dek, key).expect("open").as_slice(), b"legacy");
}

#[test]
fn garbage_after_our_prefix_is_malformed_not_a_panic() {
    for body in [&b"\xff\xff\xff"[..], b"\x0a\x05ab", b""] {
        let mut raw = b"k8s:enc:kms:v2:openbao-kms:".to_vec();
        raw.extend_from_slice(body);
        let err = Envelope::parse(&raw, NAME).unwrap_err();
        assert_eq!(err.failure(), Failure::Malformed, "{body:?}: {err}");
    }
    let mut o = object();
    o.annotations.insert("Bad".into(), vec![]);
    assert_eq!(encode(NAME, &o).unwrap_err().failure(), Failure::Malformed);
}
