using System.Collections.Concurrent;
using Dtrain.Protos.Worker;
using Dtrain.Rpc;
using Grpc.Net.Client;

namespace Dtrain.Server;

/// <summary>
/// One gRPC channel per worker registration, reused across jobs. With TLS the channel presents the coordinator's
/// certificate and accepts only the certificate the worker was issued at registration (pinned by its SHA-256).
/// </summary>
public sealed class WorkerClients(CoordinatorOptions options, CoordinatorSecurity security) : IDisposable
{
    private readonly ConcurrentDictionary<(string Address, string Certificate), GrpcChannel> channels = new();

    public WorkerControl.WorkerControlClient For(WorkerRecord worker) =>
        new(channels.GetOrAdd((worker.Address, worker.Certificate), key => Channels.Create(key.Address, security.Tls,
            ExpectedPeer.Worker(worker.Id, key.Certificate), new GrpcChannelOptions
            {
                MaxReceiveMessageSize = options.MaxMessageBytes,
                MaxSendMessageSize = options.MaxMessageBytes,
            }, Http2Settings.Default with
            {
                KeepAlivePingDelay = TimeSpan.FromSeconds(options.KeepAlivePingSeconds),
                KeepAlivePingTimeout = TimeSpan.FromSeconds(options.KeepAlivePingSeconds),
                ConnectTimeout = TimeSpan.FromSeconds(options.WorkerConnectTimeoutSeconds),
            })));

    public void Dispose()
    {
        foreach (var c in channels.Values) c.Dispose();
    }
}
