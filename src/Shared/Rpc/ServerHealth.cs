using Grpc.Health.V1;
using Grpc.HealthCheck;

namespace Dtrain.Rpc;

/// <summary>
/// The standard gRPC health service (grpc.health.v1) of a dtrain server. Service "" answers liveness: SERVING
/// from the moment the server listens until it starts shutting down. A named service answers readiness — the
/// coordinator's jobs service once it accepts jobs, a worker's control service while it is registered with a
/// coordinator and not draining — so a container runtime or Kubernetes probe can tell the two apart.
/// </summary>
public sealed class ServerHealth
{
    /// <summary>The liveness service name (the empty string, by the protocol's convention).</summary>
    public const string Live = "";

    public HealthServiceImpl Service { get; } = new();

    public void Set(string service, bool serving) =>
        Service.SetStatus(service, serving ? HealthCheckResponse.Types.ServingStatus.Serving : HealthCheckResponse.Types.ServingStatus.NotServing);

    /// <summary>Every service NOT_SERVING: the server is going away.</summary>
    public void Stopping(params string[] services)
    {
        foreach (var s in services) Set(s, false);
        Set(Live, false);
    }
}
