using Dtrain.Protos.Worker;
using Dtrain.Rpc;
using Grpc.Core;
using Grpc.Net.Client;

namespace Dtrain.Worker;

/// <summary>Over the peer's WorkerControl.GetState (chunked), on a channel made for the transfer; with TLS it accepts only the peer's issued certificate.</summary>
public sealed class GrpcPeerState(WorkerOptions options, WorkerSecurity security) : IPeerState
{
    public async Task<byte[]> FetchStateAsync(string address, string workerId, string certificateSha256, string jobId, long step, CancellationToken cancel)
    {
        using var channel = Channels.Create(address, security.Tls, ExpectedPeer.Worker(workerId, certificateSha256), new GrpcChannelOptions { MaxReceiveMessageSize = options.MaxMessageBytes });
        var client = new WorkerControl.WorkerControlClient(channel);
        using var call = client.GetState(new GetStateRequest { JobId = jobId, Step = step }, deadline: DateTime.UtcNow.AddSeconds(options.CollectiveTimeoutSeconds), cancellationToken: cancel);
        using var ms = new MemoryStream();
        await foreach (var chunk in call.ResponseStream.ReadAllAsync(cancel).ConfigureAwait(false)) chunk.Data.WriteTo(ms);
        return ms.ToArray();
    }
}
