//! Reading one cookie out of a request's `Cookie` fields (RFC 6265 §5.4: `name=value` pairs joined by `; `, in
//! one field or, from some clients, several).

use super::head::RequestHead;

/// The value of cookie `name` in the request `head` parsed from `bytes`: the first found, in field order.
pub fn find<'a>(bytes: &'a [u8], head: &'a RequestHead, name: &'a [u8]) -> Option<&'a [u8]> {
    every(bytes, head, name).next()
}

/// Every value of cookie `name` in the request, in order: a browser sends one per cookie it holds under that
/// name (set for another path or domain), and only one of them may be current.
pub fn every<'a>(bytes: &'a [u8], head: &'a RequestHead, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    head.fields
        .iter()
        .filter(|field| bytes[field.name.clone()].eq_ignore_ascii_case(b"cookie"))
        .flat_map(move |field| pairs(&bytes[field.value.clone()], name))
}

/// The values of cookie `name` in one `Cookie` field's value.
fn pairs<'a>(field: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    field.split(|&byte| byte == b';').filter_map(move |pair| {
        let pair = pair.trim_ascii();
        let equals = pair.iter().position(|&byte| byte == b'=')?;
        (&pair[..equals] == name).then(|| &pair[equals + 1..])
    })
}

/// The value of cookie `name` in one `Cookie` field's value (`a=1; b=2`).
pub fn in_field<'a>(field: &'a [u8], name: &'a [u8]) -> Option<&'a [u8]> {
    pairs(field, name).next()
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
