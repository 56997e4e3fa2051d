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

    /// <summary>
    /// Adds who each peer is to an assignment (the certificates its ring and pipeline neighbours must present), from
    /// the job's own worker records; without TLS there is nothing to add.
    /// </summary>
    public static AssignRequest Pin(AssignRequest request, IReadOnlyList<WorkerRecord> members)
    {
        var byId = members.ToDictionary(w => w.Id);
        foreach (var peer in request.Peers)
            if (byId.TryGetValue(peer.WorkerId, out var w)) peer.CertificateSha256 = w.Certificate;
        if (request.Pipeline is { } p)
        {
            Peer? At(string address) => members.FirstOrDefault(w => w.Address == address) is { } w ? new Peer { WorkerId = w.Id, Address = w.Address, CertificateSha256 = w.Certificate } : null;
            if (p.PreviousAddress.Length > 0) p.Previous = At(p.PreviousAddress);
            if (p.NextAddress.Length > 0) p.Next = At(p.NextAddress);
        }
        return request;
    }

    public void Dispose()
    {
        foreach (var c in channels.Values) c.Dispose();
    }
}
