//! Reading one cookie out of a request's `Cookie` fields (RFC 6265 §5.4: `name=value` pairs joined by `; `, in
//! one field or, from some clients, several).

use super::head::RequestHead;

/// The value of cookie `name` in the request `head` parsed from `bytes`: the first found, in field order.
pub fn find<'a>(bytes: &'a [u8], head: &RequestHead, name: &[u8]) -> Option<&'a [u8]> {
    head.fields
        .iter()
        .filter(|field| bytes[field.name.clone()].eq_ignore_ascii_case(b"cookie"))
        .find_map(|field| in_field(&bytes[field.value.clone()], name))
}

/// The value of cookie `name` in one `Cookie` field's value (`a=1; b=2`).
pub fn in_field<'a>(field: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    field.split(|&byte| byte == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let equals = pair.iter().position(|&byte| byte == b'=')?;
        (&pair[..equals] == name).then(|| &pair[equals + 1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_by_its_exact_name_among_others() {
        assert_eq!(in_field(b"a=1; session=xyz; b=2", b"session"), Some(&b"xyz"[..]));
        assert_eq!(in_field(b"session=xyz", b"session"), Some(&b"xyz"[..]));
        assert_eq!(in_field(b"xsession=1; sessionx=2", b"session"), None);
        assert_eq!(in_field(b"", b"session"), None);
    }
}
