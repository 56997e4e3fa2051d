using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Security;

/// <summary>
/// An upload whose request stream reaches the coordinator without a message: what .NET's HTTP/2 client sends when it
/// replays a client-streaming call on a new connection after Kestrel closed the old one (GOAWAY) — seen in CI as
/// LimitsTests' small upload right after a refused one failing with "empty upload" (<see cref="FileUpload"/>).
/// </summary>
public class UploadStreamTests
{
    /// <summary>Reads the first <c>Upload</c>'s messages and hands the service a stream without them, as the replayed request arrives.</summary>
    sealed class LoseFirstUploadsMessages(int calls) : Interceptor
    {
        public int Uploads;

        public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
            ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
        {
            if (!context.Method.EndsWith("/Upload", StringComparison.Ordinal) || Interlocked.Increment(ref Uploads) > calls)
                return await continuation(requestStream, context);
            while (await requestStream.MoveNext(context.CancellationToken)) { }
            return await continuation(new NoMessages<TRequest>(), context);
        }
    }

    sealed class NoMessages<T> : IAsyncStreamReader<T>
    {
        public T Current => throw new InvalidOperationException("no message");
        public Task<bool> MoveNext(CancellationToken cancellationToken) => Task.FromResult(false);
    }

    static async Task<(InProcessCluster Cluster, LoseFirstUploadsMessages Losing)> StartAsync(int lostCalls)
    {
        var losing = new LoseFirstUploadsMessages(lostCalls);
        var cluster = await InProcessCluster.StartAsync(0, services: s =>
        {
            s.AddSingleton(losing);
            s.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<LoseFirstUploadsMessages>());
        });
        return (cluster, losing);
    }

    [Fact]
    public async Task A_request_stream_without_a_message_is_answered_Unavailable_saying_nothing_arrived()
    {
        await using var cluster = await InProcessCluster.StartAsync(0);
        using var call = cluster.Client.Upload();
        await call.RequestStream.CompleteAsync();
        var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal(FileUpload.EmptyStream, e.Trailers.GetValue(FileUpload.RefusalTrailer));
        Assert.Contains("upload received no message: its request stream ended before the first chunk", e.Status.Detail);
        Assert.Contains("upload the file again", e.Status.Detail);
        Assert.True(FileUpload.ArrivedEmpty(e));
        Assert.Empty(Directory.GetFiles(Path.Combine(cluster.DataDir, "uploads")));
        Assert.Equal((0, 0L), cluster.CoordinatorService<UploadStore>().PendingOf("user \"cluster-admin\""));
    }

    [Fact]
    public async Task An_upload_whose_messages_were_lost_on_the_way_is_sent_again_and_stored_whole()
    {
        using var tmp = new TempDir();
        var text = TestJobs.Text();
        var path = tmp.Write("t.txt", text);
        var (cluster, losing) = await StartAsync(lostCalls: FileUpload.Attempts - 1);
        await using (cluster)
        {
            var id = Dtrain.Cli.JobCommands.Upload(cluster.Client, path);
            Assert.Equal(FileUpload.Attempts, losing.Uploads);
            Assert.Equal(text, File.ReadAllText(Path.Combine(cluster.DataDir, "uploads", id)));
            Assert.Single(Directory.GetFiles(Path.Combine(cluster.DataDir, "uploads")));
        }
    }

    [Fact]
    public async Task A_multi_chunk_upload_whose_writes_fail_as_its_request_is_replayed_is_sent_again_and_stored_whole()
    {
        using var tmp = new TempDir();
        var text = new string('x', FileUpload.ChunkBytes * 2 + 1000);
        var path = tmp.Write("big.txt", text);
        await using var cluster = await InProcessCluster.StartAsync(0);
        var replay = new ReplayedFirstCall();
        using var channel = Channels.Create(cluster.Address, null, ExpectedPeer.Coordinator);
        var client = new Jobs.JobsClient(channel.Intercept(replay).Intercept(m => { m.Add("authorization", "Bearer " + cluster.AdminToken); return m; }));
        var id = Dtrain.Cli.JobCommands.Upload(client, path);
        Assert.Equal(2, replay.Calls);
        Assert.Equal(text, File.ReadAllText(Path.Combine(cluster.DataDir, "uploads", id)));
    }

    [Fact]
    public async Task An_upload_whose_messages_are_lost_every_time_fails_after_the_last_attempt_saying_so()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("t.txt", "some bytes");
        var (cluster, losing) = await StartAsync(lostCalls: FileUpload.Attempts);
        await using (cluster)
        {
            var e = Assert.Throws<RpcException>(() => Dtrain.Cli.JobCommands.Upload(cluster.Client, path));
            Assert.True(FileUpload.ArrivedEmpty(e), e.ToString());
            Assert.Equal(FileUpload.Attempts, losing.Uploads);
            Assert.Empty(Directory.GetFiles(Path.Combine(cluster.DataDir, "uploads")));
        }
    }

    [Fact]
    public async Task A_refused_upload_is_not_sent_again()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("big.txt", new string('a', 100));
        var losing = new LoseFirstUploadsMessages(0);
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { MaxUploadBytes = 10 }, s =>
        {
            s.AddSingleton(losing);
            s.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<LoseFirstUploadsMessages>());
        });
        var e = Assert.Throws<RpcException>(() => Dtrain.Cli.JobCommands.Upload(cluster.Client, path));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal(1, losing.Uploads);
    }
}
