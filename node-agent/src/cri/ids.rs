//! CRI ids: new container ids, and finding what an id (or, as containerd
//! and `crictl` users expect, a unique prefix of one) names.

use tonic::Status;

/// A new CRI container id: 64 hex digits from the kernel's random source,
/// as containerd's.
pub fn new_container_id() -> Result<String, Status> {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the
        // buffer it is given, which is valid and writable for that long.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Status::internal(format!("getrandom: {e}")));
                }
            }
        }
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The one of `ids` that `wanted` names: itself, or the only one it is a
/// prefix of. `what` names the kind for the error.
pub fn resolve<'a>(
    wanted: &str,
    ids: impl IntoIterator<Item = &'a str>,
    what: &str,
) -> Result<String, Status> {
    if wanted.is_empty() {
        return Err(Status::invalid_argument(format!("no {what} id given")));
    }
    let mut matches = Vec::new();
    for id in ids {
        if id == wanted {
            return Ok(id.to_string());
        }
        if id.starts_with(wanted) {
            matches.push(id);
        }
    }
    match matches.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(Status::not_found(format!("no {what} {wanted}"))),
        many => Err(Status::invalid_argument(format!(
            "{what} id prefix {wanted} is ambiguous ({} match)",
            many.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_hex() {
        let a = new_container_id().unwrap();
        let b = new_container_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn an_exact_id_wins_and_a_prefix_must_be_unique() {
        let ids = ["pod-1", "pod-12", "pod-13"];
        assert_eq!(resolve("pod-1", ids, "sandbox").unwrap(), "pod-1");
        assert_eq!(resolve("pod-12", ids, "sandbox").unwrap(), "pod-12");
        let ambiguous = resolve("pod-", ids, "sandbox").unwrap_err();
        assert_eq!(ambiguous.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            resolve("pod-9", ids, "sandbox").unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            resolve("", ids, "sandbox").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
