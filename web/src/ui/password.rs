//! The owner's password: rules for a new one, and its argon2id hash as a PHC string (the only
//! form the hub stores).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// The shortest password accepted, in characters.
pub(crate) const MIN_PASSWORD_CHARS: usize = 10;
/// The longest, in bytes (hashing a megabyte on every login attempt would be a cheap attack).
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;

/// Which field of the setup form is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) field: &'static str,
    pub(crate) message: String,
}

/// Checks a new password and its confirmation.
pub(crate) fn check_new(password: &str, confirm: &str) -> Result<(), FieldError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(FieldError {
            field: "password",
            message: format!("Use at least {MIN_PASSWORD_CHARS} characters (this has {chars})."),
        });
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(FieldError { field: "password", message: format!("Use at most {MAX_PASSWORD_BYTES} bytes.") });
    }
    if password != confirm {
        return Err(FieldError { field: "confirm", message: "The two passwords differ.".to_owned() });
    }
    Ok(())
}

/// argon2id with the crate's recommended costs (19 MiB, 2 passes, 1 lane).
fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// The PHC string of `password` with a fresh random salt. Slow on purpose: call it off the
/// async threads.
pub(crate) fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for the salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let hash = hasher().hash_password(password.as_bytes(), &salt).map_err(|e| e.to_string())?;
    Ok(hash.to_string())
}

/// Whether `password` matches the stored PHC string; `Err` when the stored string is damaged.
pub(crate) fn verify(password: &str, stored: &str) -> Result<bool, String> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Ok(false);
    }
    let parsed = PasswordHash::new(stored).map_err(|e| format!("the stored password hash is damaged: {e}"))?;
    // The parameters come from the stored string, so older costs still verify.
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(format!("the stored password hash cannot be checked: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_need_ten_characters_and_a_matching_confirmation() {
        assert_eq!(check_new("short", "short").unwrap_err().field, "password");
        assert_eq!(check_new("ünïcödé-ok", "ünïcödé-ok"), Ok(()), "characters, not bytes");
        assert_eq!(check_new("long enough", "long enougH").unwrap_err().field, "confirm");
        let huge = "x".repeat(MAX_PASSWORD_BYTES + 1);
        assert_eq!(check_new(&huge, &huge).unwrap_err().field, "password");
    }

    #[test]
    fn a_hash_is_argon2id_salted_and_verifies_only_its_password() {
        let first = hash("correct horse battery").unwrap();
        assert!(first.starts_with("$argon2id$v=19$"), "{first}");
        assert_ne!(first, hash("correct horse battery").unwrap(), "a fresh salt each time");
        assert!(verify("correct horse battery", &first).unwrap());
        assert!(!verify("correct horse batterY", &first).unwrap());
        assert!(verify("anything", "not a hash").is_err());
    }
}
