using System.Collections.Concurrent;
using Dtrain.Protos.Worker;
using Grpc.Net.Client;

namespace Dtrain.Server;

/// <summary>One gRPC channel per worker address, reused across jobs.</summary>
public sealed class WorkerClients(CoordinatorOptions options) : IDisposable
{
    private readonly ConcurrentDictionary<string, GrpcChannel> channels = new();

    public WorkerControl.WorkerControlClient For(string address) =>
        new(channels.GetOrAdd(address, a => GrpcChannel.ForAddress(a, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = options.MaxMessageBytes,
            MaxSendMessageSize = options.MaxMessageBytes,
            HttpHandler = new SocketsHttpHandler
            {
                EnableMultipleHttp2Connections = true,
                KeepAlivePingDelay = TimeSpan.FromSeconds(options.KeepAlivePingSeconds),
                KeepAlivePingTimeout = TimeSpan.FromSeconds(options.KeepAlivePingSeconds),
                ConnectTimeout = TimeSpan.FromSeconds(options.WorkerConnectTimeoutSeconds),
            },
        })));

    public void Dispose()
    {
        foreach (var c in channels.Values) c.Dispose();
    }
}
