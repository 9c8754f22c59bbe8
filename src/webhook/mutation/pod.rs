//! A borrowed, partial view of a Pod: only the fields the injection decision needs.
//!
//! Decoding a whole `k8s_openapi::api::core::v1::Pod` allocates every string, probe and managed
//! field of the object; the admission path only needs names. Unknown fields are skipped by serde
//! without allocation, and strings borrow from the request body unless they contain escapes.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A string that borrows from the input when it can.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The pod fields the mutation reads.
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct Pod<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<Metadata<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Metadata<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    /// A controller's pods have only this at admission: the name is generated afterwards.
    #[serde(borrow, default)]
    pub generate_name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub labels: Option<Labels<'a>>,
    #[serde(borrow, default)]
    pub annotations: Option<Annotations<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Spec<'a> {
    #[serde(borrow, default)]
    pub service_account_name: Option<Str<'a>>,
    /// Deprecated alias the API server still mirrors; read only when the name is absent.
    #[serde(borrow, default)]
    pub service_account: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub node_selector: Option<NodeSelector<'a>>,
    #[serde(borrow, default)]
    pub volumes: Option<Vec<Volume<'a>>>,
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub containers: Option<Vec<Container<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Container<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub env: Option<Vec<EnvVar<'a>>>,
    #[serde(borrow, default)]
    pub volume_mounts: Option<Vec<Mount<'a>>>,
    #[serde(borrow, default)]
    pub restart_policy: Option<Str<'a>>,
}

/// A pod volume: its name, and for a projected volume the service-account tokens in it.
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct Volume<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub projected: Option<Projected<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct Projected<'a> {
    #[serde(borrow, default)]
    pub sources: Option<Tokens<'a>>,
}

/// One item of a projected volume's `sources`; only a `serviceAccountToken` matters.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
struct Source<'a> {
    #[serde(borrow, default)]
    service_account_token: Option<Token<'a>>,
}

/// A projected service-account token.
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct Token<'a> {
    #[serde(borrow, default)]
    pub audience: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub path: Str<'a>,
}

/// The service-account tokens of a projected volume that name an audience. A token without
/// one (the API server's own `kube-api-access-*` volume in every pod) is never the pod
/// identity token, so the common pod keeps nothing here and allocates nothing.
#[derive(Debug, Default)]
pub struct Tokens<'a>(pub Vec<Token<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Tokens<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Tokens<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of projected volume sources")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Tokens<'a>, S::Error> {
                let mut out = Vec::new();
                while let Some(source) = seq.next_element::<Source<'de>>()? {
                    out.extend(source.service_account_token.filter(|t| t.audience.is_some()));
                }
                Ok(Tokens(out))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// An env var: its name, and its `value` only for the token-file variables (the one value the
/// decision reads). Other values are skipped unread: they are arbitrary user text, often with
/// escapes (`&` arrives as `\u0026`) that would send the whole review off the fast reader.
#[derive(Debug, Default)]
pub struct EnvVar<'a> {
    pub name: Str<'a>,
    /// `None` when the variable is set through `valueFrom` (or its value was not kept).
    pub value: Option<Str<'a>>,
}

impl<'de: 'a, 'a> FromMap<'de> for EnvVar<'a> {
    const EXPECTING: &'static str = "struct EnvVar";
    fn from_map<M: MapAccess<'de>>(mut m: M) -> Result<Self, M::Error> {
        let mut out = EnvVar::default();
        let mut value = None;
        while let Some(key) = m.next_key::<Str<'de>>()? {
            match key.as_str() {
                "name" => out.name = m.next_value()?,
                // The API server writes `name` first; a `value` before it is kept until the
                // name says whether it is needed.
                "value" if out.name.as_str().is_empty() || keeps_value(out.name.as_str()) => {
                    value = m.next_value::<Option<Str<'de>>>()?;
                }
                _ => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        out.value = value.filter(|_| keeps_value(out.name.as_str()));
        Ok(out)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for EnvVar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        map_only(d)
    }
}

/// Whether an env var's value matters to the decision: the token-file variable of a profile.
fn keeps_value(name: &str) -> bool {
    crate::profile::PROFILES.iter().any(|p| p.token_file_env == name)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Mount<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub mount_path: Str<'a>,
    #[serde(borrow, default)]
    pub sub_path: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub sub_path_expr: Option<Str<'a>>,
}

impl Mount<'_> {
    /// The mount shows a part of its volume, not the whole of it.
    pub fn has_sub_path(&self) -> bool {
        [&self.sub_path, &self.sub_path_expr]
            .iter()
            .any(|s| s.as_ref().is_some_and(|s| !s.as_str().is_empty()))
    }

    /// The mount path without a trailing `/` (the same directory to the kubelet).
    pub fn dir(&self) -> &str {
        self.mount_path.as_str().trim_end_matches('/')
    }
}

/// A view read from a JSON object only. serde's derive also reads a struct from an array of
/// its fields in order (`[metadata, spec]`), and the patch built for such a "pod" adds object
/// keys into an array, which cannot apply; a Pod and its parts are always objects.
trait FromMap<'de>: Sized {
    const EXPECTING: &'static str;
    fn from_map<M: MapAccess<'de>>(m: M) -> Result<Self, M::Error>;
}

/// `T` from a JSON object, through [`FromMap`].
fn map_only<'de, T: FromMap<'de>, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: FromMap<'de>> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(T::EXPECTING)
        }
        fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<T, M::Error> {
            T::from_map(m)
        }
    }
    d.deserialize_map(V(std::marker::PhantomData))
}

/// The derived view structs (`#[serde(remote = "Self")]`), read from objects only.
macro_rules! map_only {
    ($($name:ident => $expecting:expr),* $(,)?) => {$(
        impl<'de: 'a, 'a> FromMap<'de> for $name<'a> {
            const EXPECTING: &'static str = $expecting;
            fn from_map<M: MapAccess<'de>>(m: M) -> Result<Self, M::Error> {
                $name::deserialize(de::value::MapAccessDeserializer::new(m))
            }
        }

        impl<'de: 'a, 'a> Deserialize<'de> for $name<'a> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                map_only(d)
            }
        }
    )*};
}

map_only!(
    Pod => "struct Pod",
    Metadata => "struct Metadata",
    Spec => "struct Spec",
    Container => "struct Container",
    Volume => "struct Volume",
    Projected => "struct Projected",
    Source => "struct Source",
    Token => "struct Token",
    Mount => "struct Mount",
);

/// Defines a map view that keeps only the values of a few known keys, so reading labels or
/// annotations never builds a map of everything in them.
macro_rules! picked_map {
    ($(#[$doc:meta])* $name:ident { $($field:ident => $key:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub struct $name<'a> {
            $(pub $field: Option<Str<'a>>,)*
        }

        impl<'de: 'a, 'a> FromMap<'de> for $name<'a> {
            const EXPECTING: &'static str = "a map of strings";
            fn from_map<M: MapAccess<'de>>(mut m: M) -> Result<Self, M::Error> {
                let mut out = $name::default();
                while let Some(key) = m.next_key::<Str<'de>>()? {
                    match key.as_str() {
                        $(k if k == $key => out.$field = m.next_value::<Option<Str<'de>>>()?,)*
                        _ => { m.next_value::<IgnoredAny>()?; }
                    }
                }
                Ok(out)
            }
        }

        impl<'de: 'a, 'a> Deserialize<'de> for $name<'a> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                map_only(d)
            }
        }
    };
}

picked_map!(
    /// The labels the webhook reads.
    Labels { inject => crate::webhook::mutation::INJECT_LABEL }
);
picked_map!(
    /// The annotations the webhook reads; the map itself being present matters for the patch.
    Annotations {
        skip_containers => crate::webhook::mutation::SKIP_CONTAINERS_ANNOTATION,
        association => crate::webhook::mutation::ASSOCIATION_ANNOTATION,
        token_expiration => crate::webhook::mutation::TOKEN_EXPIRATION_ANNOTATION,
        mirror => crate::webhook::mutation::MIRROR_ANNOTATION,
    }
);
picked_map!(
    /// The node selector keys that change the injection.
    NodeSelector { os => "kubernetes.io/os" }
);

impl<'a> Pod<'a> {
    /// Parses a pod from JSON bytes, borrowing strings from them.
    pub fn from_slice(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The pod's service account, read as the API server reads it: `serviceAccountName`,
    /// else (absent or empty) the deprecated `serviceAccount`, else `default`.
    pub fn service_account(&self) -> &str {
        fn named<'s>(s: Option<&'s Str<'_>>) -> Option<&'s str> {
            s.map(Str::as_str).filter(|s| !s.is_empty())
        }
        let spec = self.spec.as_ref();
        named(spec.and_then(|s| s.service_account_name.as_ref()))
            .or_else(|| named(spec.and_then(|s| s.service_account.as_ref())))
            .unwrap_or("default")
    }

    /// A string of the metadata, when present and not empty.
    fn metadata_str(&self, field: for<'m> fn(&'m Metadata<'a>) -> Option<&'m Str<'a>>) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(field)
            .map(Str::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `metadata.name`, when the pod has one yet (not with `generateName`).
    pub fn name(&self) -> Option<&str> {
        self.metadata_str(|m| m.name.as_ref())
    }

    /// `metadata.generateName`.
    pub fn generate_name(&self) -> Option<&str> {
        self.metadata_str(|m| m.generate_name.as_ref())
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata_str(|m| m.namespace.as_ref())
    }

    pub fn label_inject(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.inject.as_ref())
            .map(Str::as_str)
    }

    pub fn annotations(&self) -> Option<&Annotations<'a>> {
        self.metadata.as_ref().and_then(|m| m.annotations.as_ref())
    }

    pub fn node_os(&self) -> Option<&str> {
        self.spec
            .as_ref()
            .and_then(|s| s.node_selector.as_ref())
            .and_then(|n| n.os.as_ref())
            .map(Str::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_plain_strings_and_skips_unknown_fields() {
        let json = br#"{"metadata":{"labels":{"a":"b","podidentity.io/inject":"false"},
            "annotations":{"podidentity.io/skip-containers":"x,y"},"managedFields":[{"x":1}]},
            "spec":{"serviceAccountName":"app","containers":[{"name":"c","image":"i",
            "env":[{"name":"A","valueFrom":{"fieldRef":{"fieldPath":"x"}}}]}]}}"#;
        let pod = Pod::from_slice(json).unwrap();
        assert_eq!(pod.service_account(), "app");
        assert_eq!(pod.label_inject(), Some("false"));
        let skip = pod.annotations().unwrap().skip_containers.as_ref().unwrap();
        assert!(matches!(skip.0, Cow::Borrowed("x,y")));
        let c = &pod.spec.as_ref().unwrap().containers.as_ref().unwrap()[0];
        assert_eq!(c.env.as_ref().unwrap()[0].name.as_str(), "A");
        assert!(c.volume_mounts.is_none());
    }

    #[test]
    fn empty_or_missing_service_account_means_default() {
        assert_eq!(Pod::from_slice(b"{}").unwrap().service_account(), "default");
        let pod = Pod::from_slice(br#"{"spec":{"serviceAccountName":""}}"#).unwrap();
        assert_eq!(pod.service_account(), "default");
        let pod = Pod::from_slice(br#"{"spec":{"serviceAccount":"legacy"}}"#).unwrap();
        assert_eq!(pod.service_account(), "legacy");
        // An empty name falls back to the deprecated field, as the API server's conversion does.
        let pod = Pod::from_slice(br#"{"spec":{"serviceAccountName":"","serviceAccount":"app"}}"#).unwrap();
        assert_eq!(pod.service_account(), "app");
        let pod =
            Pod::from_slice(br#"{"spec":{"serviceAccountName":"new","serviceAccount":"old"}}"#).unwrap();
        assert_eq!(pod.service_account(), "new");
    }

    #[test]
    fn keeps_only_the_token_file_values_and_tokens_with_an_audience() {
        let json = br#"{"metadata":{"name":"p","generateName":"g-"},"spec":{"volumes":[
            {"name":"kube-api-access","projected":{"sources":[{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}},{"configMap":{"name":"kube-root-ca.crt"}}]}},
            {"name":"t","projected":{"sources":[{"configMap":{"name":"x"}},{"serviceAccountToken":{"audience":"a","path":"f"}}]}},
            {"name":"e","emptyDir":{}}],
            "containers":[{"name":"c","env":[
                {"name":"URL","value":"https://x/?a=1\u0026b=2"},
                {"value":"/before/name","name":"HC_CONTAINER_AUTHORIZATION_TOKEN_FILE"},
                {"value":"dropped","name":"OTHER"},
                {"name":"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE","value":"/t/f"},
                {"name":"HC_CONTAINER_CREDENTIALS_FULL_URI","valueFrom":{"fieldRef":{"fieldPath":"x"}}}],
            "volumeMounts":[{"name":"t","mountPath":"/t/","subPath":"","subPathExpr":"$(X)"}]}]}}"#;
        let pod = Pod::from_slice(json).unwrap();
        assert_eq!((pod.name(), pod.generate_name()), (Some("p"), Some("g-")));
        let spec = pod.spec.as_ref().unwrap();
        let vols = spec.volumes.as_ref().unwrap();
        assert!(
            vols[0]
                .projected
                .as_ref()
                .unwrap()
                .sources
                .as_ref()
                .unwrap()
                .0
                .is_empty()
        );
        let tokens = &vols[1].projected.as_ref().unwrap().sources.as_ref().unwrap().0;
        assert_eq!(tokens.len(), 1);
        assert_eq!(
            (
                tokens[0].audience.as_ref().unwrap().as_str(),
                tokens[0].path.as_str()
            ),
            ("a", "f")
        );
        assert!(vols[2].projected.is_none());
        let c = &spec.containers.as_ref().unwrap()[0];
        let values: Vec<(&str, Option<&str>)> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_ref().map(Str::as_str)))
            .collect();
        assert_eq!(
            values,
            [
                ("URL", None),
                ("HC_CONTAINER_AUTHORIZATION_TOKEN_FILE", Some("/before/name")),
                ("OTHER", None),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", Some("/t/f")),
                ("HC_CONTAINER_CREDENTIALS_FULL_URI", None),
            ]
        );
        let m = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(m.dir(), "/t");
        assert!(m.has_sub_path());
    }

    #[test]
    fn a_pod_and_its_parts_are_objects_never_arrays() {
        // serde's derive alone reads a struct from an array of its fields: `[]` would be a pod
        // with no metadata and no spec, and its patch (`add /metadata`, `add /spec`) cannot
        // apply to an array (found writing the `review` fuzz target's patch-applies check).
        let derived = Pod::deserialize(&mut serde_json::Deserializer::from_slice(b"[]"));
        assert!(derived.is_ok(), "the derive alone accepts an array");
        for json in [
            &br#"[]"#[..],
            br#"[null, null]"#,
            br#"{"metadata":[]}"#,
            br#"{"spec":[]}"#,
            br#"{"spec":{"containers":[["c"]]}}"#,
            br#"{"spec":{"initContainers":[[]]}}"#,
            br#"{"spec":{"volumes":[["cce-pod-identity-token"]]}}"#,
            br#"{"spec":{"containers":[{"name":"c","env":[["HC_CONTAINER_CREDENTIALS_FULL_URI"]]}]}}"#,
            br#"{"spec":{"volumes":[{"name":"v","projected":[]}]}}"#,
            br#"{"spec":{"volumes":[{"name":"v","projected":{"sources":[[]]}}]}}"#,
            br#"{"spec":{"containers":[{"name":"c","volumeMounts":[["n","/p"]]}]}}"#,
        ] {
            let err = Pod::from_slice(json).unwrap_err().to_string();
            assert!(err.contains("invalid type: sequence, expected struct"), "{err}");
        }
        let err = Pod::from_slice(br#"{"spec":{"containers":["c"]}}"#).unwrap_err();
        assert!(err.to_string().contains("expected struct Container"), "{err}");
        // Objects read as before, borrowed.
        let pod = Pod::from_slice(br#"{"metadata":{},"spec":{"volumes":[{"name":"v"}],"containers":[{"name":"c","volumeMounts":[{"name":"v","mountPath":"/p"}]}]}}"#).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert!(matches!(
            spec.volumes.as_ref().unwrap()[0].name.0,
            Cow::Borrowed("v")
        ));
        let m = &spec.containers.as_ref().unwrap()[0]
            .volume_mounts
            .as_ref()
            .unwrap()[0];
        assert_eq!((m.name.as_str(), m.mount_path.as_str()), ("v", "/p"));
    }

    #[test]
    fn nulls_read_as_absent_and_wrong_types_are_errors() {
        let pod = Pod::from_slice(br#"{"metadata":{"annotations":null},"spec":{"volumes":null}}"#).unwrap();
        assert!(pod.annotations().is_none());
        assert!(pod.spec.unwrap().volumes.is_none());
        assert!(Pod::from_slice(br#"{"spec":{"containers":"nope"}}"#).is_err());
        assert!(Pod::from_slice(br#"{"metadata":{"labels":{"podidentity.io/inject":1}}}"#).is_err());
    }
}
