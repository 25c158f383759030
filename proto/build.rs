//! Compiles the gRPC API (`stratum/v1`) with protox, a pure-Rust protobuf
//! compiler, so building needs no `protoc` binary; tonic's codegen turns
//! the descriptors into Rust. It also writes the encoded
//! FileDescriptorSet to `$OUT_DIR/stratum_v1_descriptor.bin` for gRPC
//! server reflection.
//!
//! With the `serde` feature the messages also implement
//! `serde::Serialize`, as the protobuf JSON mapping writes them (see
//! `src/json.rs` for what it writes and where it differs). Why serde
//! derives placed from the descriptors rather than pbjson-build: pbjson
//! (0.9, for prost 0.14) serialises `google.protobuf.Timestamp` fields only
//! when they are `pbjson_types::Timestamp`, so the feature would change the
//! type of every timestamp field. Cargo unifies features across a build,
//! so the agent, which builds `prost_types::Timestamp`s and does not ask
//! for the feature, would get the other type whenever `nodectl` is built
//! with it. Derives only add impls: the types stay the same with the
//! feature on or off. The attributes are computed from the same
//! descriptors prost generates from, so a new field or enum is covered
//! without touching this file, and a field kind it cannot write yet fails
//! the build here, naming the field.

use std::fmt::Write as _;
use std::{env, fs, io, path::PathBuf};

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

const API_DIR: &str = ".";
const API_FILES: [&str; 7] = [
    "stratum/v1/resources.proto",
    "stratum/v1/host.proto",
    "stratum/v1/resource_pools.proto",
    "stratum/v1/virtual_machines.proto",
    "stratum/v1/images.proto",
    "stratum/v1/pods.proto",
    "stratum/v1/networks.proto",
];
const PACKAGE: &str = "stratum.v1";
const DESCRIPTOR_FILE: &str = "stratum_v1_descriptor.bin";
/// The `ProtoEnum` impls `src/proto.rs` includes with the `serde` feature.
const ENUM_NAMES_FILE: &str = "stratum.v1.serde.rs";
/// Where the generated types and the serde helpers live in this crate.
const TYPES: &str = "crate::proto::stratum::v1";
const HELPERS: &str = "crate::json";
const TIMESTAMP: &str = ".google.protobuf.Timestamp";

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    println!("cargo:rerun-if-changed=stratum");
    let fds = protox::compile(API_FILES, [API_DIR])?;
    write_descriptor(&fds)?;
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Maps as BTreeMap: deterministic encoding and listing order.
        .btree_map(".")
        // The last event of a pull carries the whole image; boxed, so every
        // progress event is not as large as an image.
        .boxed(".stratum.v1.PullImageProgress.event.image");
    if env::var_os("CARGO_FEATURE_SERDE").is_some() {
        builder = serde_attributes(builder, &fds)?;
        write_enum_names(&fds)?;
    }
    builder.compile_fds(fds)?;
    Ok(())
}

/// The descriptor set reflection serves.
fn write_descriptor(fds: &FileDescriptorSet) -> io::Result<()> {
    fs::write(out_dir()?.join(DESCRIPTOR_FILE), fds.encode_to_vec())
}

fn out_dir() -> io::Result<PathBuf> {
    env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| io::Error::other("OUT_DIR unset"))
}

/// The messages of the API package (none are nested in it).
fn messages(fds: &FileDescriptorSet) -> impl Iterator<Item = &DescriptorProto> {
    fds.file
        .iter()
        .filter(|f| f.package() == PACKAGE)
        .flat_map(|f| f.message_type.iter())
}

/// `derive(Serialize)` on every message and oneof, and on each field the
/// JSON name and, where serde's own form is not the mapping's, the helper
/// that writes it.
fn serde_attributes(
    mut builder: tonic_prost_build::Builder,
    fds: &FileDescriptorSet,
) -> Result<tonic_prost_build::Builder, BoxError> {
    const DERIVE: &str = "#[derive(::serde::Serialize)]";
    builder = builder.message_attribute(format!(".{PACKAGE}"), DERIVE);
    for message in messages(fds) {
        if !message.nested_type.iter().all(is_map_entry) || !message.enum_type.is_empty() {
            return Err(format!("{}: nested types are not mapped to serde", message.name()).into());
        }
        let path = format!(".{PACKAGE}.{}", message.name());
        for (index, oneof) in message.oneof_decl.iter().enumerate() {
            let members = || message.field.iter().filter(|f| in_oneof(f, index));
            // A proto3 `optional` field is a synthetic oneof that prost
            // makes an `Option` field; it is written as any other field.
            if members().all(|f| f.proto3_optional()) {
                continue;
            }
            let oneof_path = format!("{path}.{}", oneof.name());
            builder = builder.enum_attribute(&oneof_path, DERIVE);
            // A oneof's member is written as a field of the message. The
            // path has no leading dot: prost also applies a field
            // attribute to every path it prefixes, the oneof's own
            // variants included, where `flatten` does not belong; this
            // suffix form matches the message's field only.
            builder = builder.field_attribute(&oneof_path[1..], "#[serde(flatten)]");
            for field in members() {
                let attr = field_attribute(message, field, &path, true)?;
                builder = builder.field_attribute(format!("{oneof_path}.{}", field.name()), attr);
            }
        }
        for field in message.field.iter() {
            if field.oneof_index.is_some() && !field.proto3_optional() {
                continue;
            }
            let attr = field_attribute(message, field, &path, false)?;
            builder = builder.field_attribute(format!("{path}.{}", field.name()), attr);
        }
    }
    Ok(builder)
}

fn is_map_entry(nested: &DescriptorProto) -> bool {
    nested.options.as_ref().is_some_and(|o| o.map_entry())
}

fn in_oneof(field: &FieldDescriptorProto, index: usize) -> bool {
    field
        .oneof_index
        .and_then(|i| usize::try_from(i).ok())
        .is_some_and(|i| i == index)
}

/// `#[serde(rename = "jsonName", serialize_with = ...)]` for one field, or
/// for one member of a oneof (a variant of its enum).
fn field_attribute(
    message: &DescriptorProto,
    field: &FieldDescriptorProto,
    path: &str,
    oneof_member: bool,
) -> Result<String, BoxError> {
    let unsupported =
        |what: &str| format!("{path}.{}: {what} is not mapped to serde", field.name());
    let repeated = field.label() == Label::Repeated;
    let optional = field.proto3_optional();
    let map = repeated
        && message
            .nested_type
            .iter()
            .any(|n| is_map_entry(n) && field.type_name().ends_with(&format!(".{}", n.name())));
    let helper = match field.r#type() {
        Type::Enum => {
            let rust = enum_type(field.type_name()).ok_or_else(|| unsupported("a nested enum"))?;
            let form = match (repeated, optional) {
                (false, false) => "enumeration",
                (false, true) => "optional_enumeration",
                (true, _) => "repeated_enumeration",
            };
            Some(format!("{HELPERS}::{form}::<{rust}, _>"))
        }
        Type::Bytes if repeated || optional => {
            return Err(unsupported("repeated or optional bytes").into())
        }
        Type::Bytes => Some(format!("{HELPERS}::bytes")),
        Type::Message if map => {
            let entry = message
                .nested_type
                .iter()
                .find(|n| field.type_name().ends_with(&format!(".{}", n.name())));
            let plain = entry.is_some_and(|e| {
                e.field
                    .iter()
                    .all(|f| !matches!(f.r#type(), Type::Enum | Type::Bytes | Type::Message))
            });
            if !plain {
                return Err(unsupported("a map of enums, bytes or messages").into());
            }
            None
        }
        Type::Message if field.type_name() == TIMESTAMP && !repeated && !oneof_member => {
            Some(format!("{HELPERS}::timestamp"))
        }
        Type::Message if !field.type_name().starts_with(&format!(".{PACKAGE}.")) => {
            return Err(unsupported(field.type_name()).into());
        }
        _ => None,
    };
    let mut attr = format!("#[serde(rename = \"{}\"", json_name(field));
    if let Some(helper) = helper {
        write!(attr, ", serialize_with = \"{helper}\"")?;
    }
    attr.push_str(")]");
    Ok(attr)
}

/// The Rust path of a top-level enum of the package, as prost names it.
fn enum_type(type_name: &str) -> Option<String> {
    let name = type_name.strip_prefix(&format!(".{PACKAGE}."))?;
    (!name.contains('.')).then(|| format!("{TYPES}::{name}"))
}

/// The field's JSON name: protox fills it in as protoc does; if not, the
/// mapping's rule (drop each `_`, upper-case the letter after it).
fn json_name(field: &FieldDescriptorProto) -> String {
    if let Some(name) = &field.json_name {
        return name.clone();
    }
    let mut out = String::new();
    let mut upper = false;
    for c in field.name().chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `ProtoEnum` for every enum of the package: the helpers write an enum
/// field by its `as_str_name()`.
fn write_enum_names(fds: &FileDescriptorSet) -> Result<(), BoxError> {
    let mut out = String::from("// Generated by build.rs: the enums' proto names for serde.\n");
    for file in fds.file.iter().filter(|f| f.package() == PACKAGE) {
        for e in &file.enum_type {
            writeln!(
                out,
                "impl {HELPERS}::ProtoEnum for {name} {{\n    \
                 fn proto_name(&self) -> &'static str {{\n        \
                 self.as_str_name()\n    }}\n}}",
                name = e.name()
            )?;
        }
    }
    fs::write(out_dir()?.join(ENUM_NAMES_FILE), out)?;
    Ok(())
}
