//! Bounded echoes: huge client strings (uid, key_id, annotation keys) are cut to 128 bytes
//! before they reach a log line or an error message, so neither grows with the input.
pub mod common;

use std::collections::HashMap;

use bao_kms_provider::kms::ANNOTATION_KEY_VERSION;
use bao_kms_provider::pb;
use common::*;
use tonic::Code;

/// "A few KiB": the limit for a response message and for any single log line.
const FEW_KIB: usize = 4 * 1024;

fn longest_line(text: &str) -> usize {
    text.lines().map(str::len).max().unwrap_or(0)
}

#[tokio::test]
async fn huge_uid_annotation_key_and_key_id_stay_out_of_logs_and_errors() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut c = p.client().await;
    let uid = "u".repeat(200 * 1024);
    let enc = encrypt(&mut c, &[1u8; 32]).await;

    // A 30 KiB annotation key next to the real one, with a 200 KiB uid: refused by name.
    let mut annotations = enc.annotations.clone();
    annotations.insert(
        format!("{}.example.com", "k".repeat(30 * 1024)),
        b"1".to_vec(),
    );
    let refused = c
        .decrypt(pb::DecryptRequest {
            ciphertext: enc.ciphertext.clone(),
            uid: uid.clone(),
            key_id: enc.key_id.clone(),
            annotations,
        })
        .await
        .expect_err("unexpected annotation");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("unexpected annotation") && refused.message().len() < FEW_KIB,
        "message of {} bytes",
        refused.message().len()
    );

    // A 50 KiB key_id (the gRPC limit is 256 KiB per message): refused by size, not echoed.
    let refused = c
        .decrypt(pb::DecryptRequest {
            ciphertext: enc.ciphertext.clone(),
            uid: uid.clone(),
            key_id: "x".repeat(50 * 1024),
            annotations: HashMap::from([(ANNOTATION_KEY_VERSION.to_owned(), b"1".to_vec())]),
        })
        .await
        .expect_err("key_id too long");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().len() < FEW_KIB);

    // A successful Encrypt with the same uid is logged (debug) with the uid clipped.
    c.encrypt(pb::EncryptRequest {
        plaintext: vec![2u8; 32],
        uid: uid.clone(),
    })
    .await
    .expect("Encrypt with a huge uid");

    let logs = p.logs();
    let calls: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("kms call") && l.contains("uuuuuuuu"))
        .collect();
    assert_eq!(calls.len(), 3, "three logged calls carry the (clipped) uid");
    assert!(
        longest_line(&logs) < FEW_KIB,
        "a log line of {} bytes",
        longest_line(&logs)
    );
    assert!(calls.iter().all(|l| l.contains("(204800 bytes)")));
}

#[tokio::test]
async fn unknown_key_id_is_clipped_in_the_refresh_log_line() {
    let bao = Bao::start().await;
    let p = Provider::start(&ProviderOptions::new(&bao)).await;
    let mut c = p.client().await;
    // The longest key_id KMS v2 allows: it passes the size check and reaches the lookup.
    let key_id = "z".repeat(1024);
    let refused = c
        .decrypt(pb::DecryptRequest {
            ciphertext: b"vault:v1:AAAA".to_vec(),
            uid: "unknown-key-id".into(),
            key_id: key_id.clone(),
            annotations: HashMap::from([(ANNOTATION_KEY_VERSION.to_owned(), b"1".to_vec())]),
        })
        .await
        .expect_err("unknown key_id");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");

    let logs = p.logs();
    let refresh: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("key_id not seen yet"))
        .collect();
    assert_eq!(refresh.len(), 1, "one metadata refresh is logged:\n{logs}");
    assert!(refresh[0].contains("(1024 bytes)"), "{}", refresh[0]);
    let unclipped = "z".repeat(129);
    assert!(
        !logs.contains(&unclipped),
        "a log line carries more than 128 bytes of the key_id"
    );
}
