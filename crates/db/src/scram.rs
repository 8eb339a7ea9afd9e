//! SCRAM-SHA-256 password verifiers computed on the client (RFC 5802 / 7677, in
//! PostgreSQL's `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` form), so
//! `ALTER ROLE ... PASSWORD` carries a verifier and the password itself never reaches the
//! server's statement text, logs or `pg_stat_activity`.

use openssl::base64::encode_block;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

use crate::DbError;

/// PostgreSQL's default (`scram_iterations`).
pub const ITERATIONS: usize = 4096;

/// The verifier of `password` with a random 16-byte salt.
pub fn verifier(password: &str) -> Result<String, DbError> {
    let mut salt = [0u8; 16];
    openssl::rand::rand_bytes(&mut salt).map_err(tls)?;
    verifier_with(password, &salt, ITERATIONS)
}

/// The verifier of `password` for a given salt and iteration count.
pub fn verifier_with(password: &str, salt: &[u8], iterations: usize) -> Result<String, DbError> {
    // SCRAM normalises passwords with SASLprep; for ASCII that is the identity. Refusing
    // the rest keeps our verifier equal to what every client computes.
    if !password.is_ascii() || password.bytes().any(|b| b.is_ascii_control()) {
        return Err(DbError::Tls(
            "role passwords must be printable ASCII (SCRAM's SASLprep is not applied here)".into(),
        ));
    }
    let mut salted = [0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(
        password.as_bytes(),
        salt,
        iterations,
        MessageDigest::sha256(),
        &mut salted,
    )
    .map_err(tls)?;
    let client_key = hmac(&salted, b"Client Key")?;
    let stored_key = openssl::sha::sha256(&client_key);
    let server_key = hmac(&salted, b"Server Key")?;
    Ok(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        encode_block(salt),
        encode_block(&stored_key),
        encode_block(&server_key)
    ))
}

fn hmac(key: &[u8], data: &[u8]) -> Result<Vec<u8>, DbError> {
    let key = PKey::hmac(key).map_err(tls)?;
    let mut s = Signer::new(MessageDigest::sha256(), &key).map_err(tls)?;
    s.update(data).map_err(tls)?;
    s.sign_to_vec().map_err(tls)
}

fn tls(e: openssl::error::ErrorStack) -> DbError {
    DbError::Tls(format!("computing a SCRAM verifier: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_verifier_postgresql_computed() {
        // `SET password_encryption = 'scram-sha-256'; CREATE ROLE x PASSWORD 'pencil'`
        // made this entry in pg_authid (PostgreSQL 15, random salt); same salt, same verifier.
        let salt = openssl::base64::decode_block("edBTwRedGk6fKa/OOtfilw==").unwrap();
        assert_eq!(
            verifier_with("pencil", &salt, 4096).unwrap(),
            "SCRAM-SHA-256$4096:edBTwRedGk6fKa/OOtfilw==$iK02Z96pJnz6jdYoJl/f7ll8HLq16KZoZTQa/A00Tz0=:0woXZeFlPRqUxZs0q5tG80moPxbgZYObL3bRdZDoYqA="
        );
    }

    #[test]
    fn salts_differ_and_non_ascii_is_refused() {
        assert_ne!(verifier("pw").unwrap(), verifier("pw").unwrap());
        assert!(verifier("pässword").is_err());
        assert!(verifier("a\nb").is_err());
    }
}
