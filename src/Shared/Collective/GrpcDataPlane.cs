using Dtrain.Protos.Collective;
using Dtrain.Rpc;
using Google.Protobuf;
using Grpc.Core;
using CollectiveGrpc = Dtrain.Protos.Collective.Collective;

namespace Dtrain.Collective;

/// <summary>
/// The gRPC side of the <see cref="DataPlane"/>'s negotiation: the receiver's <c>Hello</c> and <c>AttachSharedMemory</c>
/// (served by <see cref="CollectiveService"/>) and the sender's calls to them, with <see cref="DataPlaneRefusal"/>
/// mapped to status codes and the <c>dtrain-refusal</c> trailer and back. The data plane itself knows no gRPC type.
/// </summary>
internal static class GrpcDataPlane
{
    /// <summary>The receiving side of <c>Hello</c>.</summary>
    public static DataPlaneOffer Hello(DataPlane plane, DataPlaneHello request, ServerCallContext context)
    {
        try
        {
            var offer = plane.Hello(request.JobId, request.Generation, request.SenderRank, request.WorldSize, PeerIdentity.Of(context));
            var reply = new DataPlaneOffer { HostId = offer.HostId, Token = ByteString.CopyFrom(offer.Token), TcpPort = offer.TcpPort };
            if (offer.ProbePath is not null) reply.ProbePath = offer.ProbePath;
            if (offer.ProbeNonce is not null) reply.ProbeNonce = offer.ProbeNonce;
            return reply;
        }
        catch (DataPlaneRefusal refusal)
        {
            throw ToRpc(refusal);
        }
    }

    /// <summary>The receiving side of <c>AttachSharedMemory</c>.</summary>
    public static SharedMemoryAttached AttachSharedMemory(DataPlane plane, SharedMemoryAttach request, ServerCallContext context)
    {
        try
        {
            plane.AttachSharedMemory(request.JobId, request.Generation, request.SenderRank, request.Path, PeerIdentity.Of(context));
            return new SharedMemoryAttached();
        }
        catch (DataPlaneRefusal refusal)
        {
            throw ToRpc(refusal);
        }
    }

    /// <summary>The status (and trailer) a refusal travels as.</summary>
    public static RpcException ToRpc(DataPlaneRefusal refusal)
    {
        ArgumentNullException.ThrowIfNull(refusal);
        var trailer = refusal.Kind switch
        {
            DataPlaneRefusalKind.NotRegistered => "not-registered",
            DataPlaneRefusalKind.Superseded => "superseded",
            DataPlaneRefusalKind.Closed => "closed",
            _ => null,
        };
        var code = refusal.Kind switch
        {
            DataPlaneRefusalKind.Forbidden => StatusCode.PermissionDenied,
            DataPlaneRefusalKind.Unreachable => StatusCode.Unavailable,
            DataPlaneRefusalKind.NoAnswer => StatusCode.DeadlineExceeded,
            DataPlaneRefusalKind.Failed => StatusCode.Internal,
            _ => StatusCode.FailedPrecondition,
        };
        return trailer is null
            ? new RpcException(new Status(code, refusal.Message))
            : new RpcException(new Status(code, refusal.Message), new Metadata { { CollectiveService.RefusalTrailer, trailer } });
    }

    /// <summary>A failed call as the data plane sees it; its message is "STATUS: detail".</summary>
    public static DataPlaneRefusal FromRpc(RpcException ex)
    {
        ArgumentNullException.ThrowIfNull(ex);
        var kind = ex.StatusCode switch
        {
            StatusCode.Unavailable => DataPlaneRefusalKind.Unreachable,
            StatusCode.DeadlineExceeded => DataPlaneRefusalKind.NoAnswer,
            StatusCode.PermissionDenied => DataPlaneRefusalKind.Forbidden,
            StatusCode.FailedPrecondition => ex.Trailers.GetValue(CollectiveService.RefusalTrailer) switch
            {
                "not-registered" => DataPlaneRefusalKind.NotRegistered,
                "superseded" => DataPlaneRefusalKind.Superseded,
                "closed" => DataPlaneRefusalKind.Closed,
                _ => DataPlaneRefusalKind.Refused,
            },
            _ => DataPlaneRefusalKind.Failed,
        };
        return new DataPlaneRefusal(kind, $"{ex.StatusCode}: {ex.Status.Detail}", ex);
    }

    /// <summary>Opens the sender's control channel to a receiver.</summary>
    public static IDataPlanePeer Connect(string address, ClusterTls? tls, ExpectedPeer expected) => new Peer(address, tls, expected);

    private sealed class Peer(string address, ClusterTls? tls, ExpectedPeer expected) : IDataPlanePeer
    {
        private readonly Grpc.Net.Client.GrpcChannel channel = Channels.Create(address, tls, expected);

        public async Task<DataPlaneLinkOffer> HelloAsync(string jobId, long generation, int sender, int worldSize, DateTimeOffset deadline, CancellationToken cancellationToken)
        {
            try
            {
                var offer = await new CollectiveGrpc.CollectiveClient(channel).HelloAsync(
                    new DataPlaneHello { JobId = jobId, Generation = generation, SenderRank = sender, WorldSize = worldSize },
                    deadline: deadline.UtcDateTime, cancellationToken: cancellationToken).ResponseAsync.ConfigureAwait(false);
                return new DataPlaneLinkOffer(offer.HostId, offer.Token.ToByteArray(), offer.TcpPort,
                    offer.ProbePath.Length > 0 ? offer.ProbePath : null, offer.ProbeNonce);
            }
            catch (RpcException ex)
            {
                throw FromRpc(ex);
            }
        }

        public async Task AttachSharedMemoryAsync(string jobId, long generation, int sender, string path, DateTimeOffset deadline, CancellationToken cancellationToken)
        {
            try
            {
                await new CollectiveGrpc.CollectiveClient(channel).AttachSharedMemoryAsync(
                    new SharedMemoryAttach { JobId = jobId, Generation = generation, SenderRank = sender, Path = path },
                    deadline: deadline.UtcDateTime, cancellationToken: cancellationToken).ResponseAsync.ConfigureAwait(false);
            }
            catch (RpcException ex)
            {
                throw FromRpc(ex);
            }
        }

        public void Dispose() => channel.Dispose();
    }
}
