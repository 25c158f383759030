//! gRPC server reflection on the real agent, in both protocol versions
//! clients speak: v1 (grpcurl, grpc-java) and v1alpha (Python's
//! grpcio-reflection, older grpcurl). Each lists the Stratum services.

use stratum_testkit::test_agent::TestAgent;

macro_rules! list_services {
    ($version:ident, $agent:expr) => {{
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new($agent.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect(concat!(stringify!($version), " reflection answers"))
            .into_inner();
        let response = responses.message().await.unwrap().expect("a response");
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                names.sort();
                names
            }
            other => panic!("not a service list: {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let agent = TestAgent::start("reflection");
    let v1 = list_services!(v1, agent);
    let v1alpha = list_services!(v1alpha, agent);
    for service in [
        "stratum.v1.Host",
        "stratum.v1.ImageService",
        "stratum.v1.PodService",
        "stratum.v1.ResourcePools",
        "stratum.v1.VirtualMachines",
        "grpc.health.v1.Health",
    ] {
        assert!(
            v1.iter().any(|s| s == service),
            "v1 lacks {service}: {v1:?}"
        );
    }
    // Each version lists its own reflection service; the rest is equal.
    let without_reflection = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .filter(|s| !s.starts_with("grpc.reflection."))
            .collect()
    };
    assert_eq!(
        without_reflection(v1),
        without_reflection(v1alpha),
        "both versions list the same services"
    );
}
