//! Generates `apache.rocketmq.v2` (messages, server and client) from the
//! vendored `.proto` files with protox, a protobuf compiler in Rust, so a
//! build needs no `protoc` binary.

fn main() {
    let protos = ["proto/apache/rocketmq/v2/service.proto", "proto/apache/rocketmq/v2/definition.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let files = match protox::compile(["apache/rocketmq/v2/service.proto"], ["proto"]) {
        Ok(f) => f,
        Err(e) => panic!("compiling the vendored protos: {e}"),
    };
    if let Err(e) = tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(files) {
        panic!("generating code from the vendored protos: {e}");
    }
}
