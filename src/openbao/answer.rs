//! What an OpenBao answer or a failed exchange means for the caller: a typed `Error` from the
//! HTTP status and OpenBao's error messages, or from the transport failure.
use ::http::StatusCode;
use zeroize::Zeroizing;

use super::conn::SendError;
use super::Error;

/// A finished HTTP exchange as a result: 2xx is data, everything else a typed error.
pub(super) fn classify(
    status: StatusCode,
    buf: Zeroizing<Vec<u8>>,
) -> Result<(StatusCode, Zeroizing<Vec<u8>>), Error> {
    if status.is_success() {
        return Ok((status, buf));
    }
    let message = error_messages(&buf);
    Err(match status.as_u16() {
        400 => Error::BadRequest(message),
        403 => Error::PermissionDenied(message),
        404 => Error::NotFound(message),
        429 => Error::RateLimited,
        503 => Error::Sealed,
        code => Error::Server {
            status: code,
            message,
        },
    })
}

pub(super) fn transport_error(e: SendError) -> Error {
    if let Some(p11) = pkcs11_cause(&e) {
        return Error::Pkcs11(p11);
    }
    match e {
        SendError::TooLarge(max) => Error::ResponseTooLarge(max),
        e => Error::Unreachable(crate::support::error_chain(&e)),
    }
}

/// A handshake that failed because the token could not sign is a token problem, not an
/// unreachable OpenBao: find our error inside the io::Error rustls reported.
fn pkcs11_cause(e: &SendError) -> Option<super::Pkcs11Error> {
    type Dyn<'a> = &'a (dyn std::error::Error + 'static);
    let mut todo: Vec<Dyn<'_>> = vec![e];
    // Bounded: error chains are short; a cycle must not loop forever.
    for _ in 0..32 {
        let s = todo.pop()?;
        if let Some(rustls::Error::Other(other)) = s.downcast_ref::<rustls::Error>() {
            if let Some(p) = other.0.downcast_ref::<super::Pkcs11Error>() {
                return Some(p.clone());
            }
        }
        // io::Error::source() skips the error it wraps; look at that one too.
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            todo.push(inner);
        }
        if let Some(next) = s.source() {
            todo.push(next);
        }
    }
    None
}

/// OpenBao's `{"errors": [...]}`, shortened; never echoes request data.
pub(crate) fn error_messages(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    let text = serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.join("; "))
        .unwrap_or_default();
    let mut text = if text.is_empty() {
        "no error message".to_owned()
    } else {
        text
    };
    if text.len() > 300 {
        let mut cut = 300;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}
