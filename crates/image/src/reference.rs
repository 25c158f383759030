//! Image references in one canonical spelling, so `busybox`,
//! `docker.io/library/busybox` and `docker.io/library/busybox:latest` name
//! the same stored image. Parsing is oci-client's (`oci_spec`'s
//! distribution `Reference`), the same the registry client uses.

use oci_client::Reference;

use super::error::ImageError;

/// Parses a user-given reference (`[registry/]repo[:tag][@digest]`).
pub fn parse(reference: &str) -> Result<Reference, ImageError> {
    Reference::try_from(reference).map_err(|e| ImageError::InvalidReference {
        reference: reference.to_owned(),
        reason: e.to_string(),
    })
}

/// The names an image pulled by `reference` is stored under: the tag form
/// `registry/repo:tag` and, when pinned, the digest form
/// `registry/repo@sha256:…`.
pub fn names(reference: &Reference) -> Vec<String> {
    let repo = format!("{}/{}", reference.registry(), reference.repository());
    let mut out = Vec::new();
    if let Some(tag) = reference.tag() {
        out.push(format!("{repo}:{tag}"));
    }
    if let Some(digest) = reference.digest() {
        out.push(format!("{repo}@{digest}"));
    }
    out
}

/// The one name a lookup by `reference` matches: the digest form when the
/// reference is pinned, else the tag form.
pub fn lookup_name(reference: &Reference) -> Option<String> {
    let mut names = names(reference);
    names.pop()
}

/// Canonical names for a reference given in an archive (`RepoTags`,
/// annotations). A bare tag (no repository) is not a name and gives none.
pub fn archive_names(given: &str) -> Result<Vec<String>, ImageError> {
    if !given.contains(['/', ':', '@']) {
        return Ok(Vec::new());
    }
    parse(given).map(|r| names(&r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> Vec<String> {
        names(&parse(s).expect("parse"))
    }

    #[test]
    fn docker_hub_short_names_are_canonical() {
        let full = vec!["docker.io/library/busybox:latest".to_owned()];
        assert_eq!(canon("busybox"), full);
        assert_eq!(canon("docker.io/library/busybox:latest"), full);
        assert_eq!(
            canon("127.0.0.1:5000/busybox:1"),
            vec!["127.0.0.1:5000/busybox:1".to_owned()]
        );
    }

    #[test]
    fn pinned_references_keep_both_forms() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("reg.example/app:v1@{d}")).expect("parse");
        assert_eq!(
            names(&r),
            vec![
                "reg.example/app:v1".to_owned(),
                format!("reg.example/app@{d}")
            ]
        );
        assert_eq!(lookup_name(&r), Some(format!("reg.example/app@{d}")));
    }

    #[test]
    fn bare_tags_and_garbage() {
        assert_eq!(archive_names("latest").ok(), Some(vec![]));
        assert!(parse("UPPER/Case").is_err());
        assert!(parse("").is_err());
    }
}
