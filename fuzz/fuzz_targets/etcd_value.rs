#![no_main]
//! See bao_kms_provider::fuzzing::etcd_value.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bao_kms_provider::fuzzing::etcd_value(data));
