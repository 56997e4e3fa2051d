using System.Net;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Tests.Support;
using Dtrain.Worker;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Cluster;

/// <summary>The standard gRPC health service on both servers, `dtrain health`, and the worker settings containers rely on.</summary>
public class HealthAndOptionsTests
{
    static HealthCheckResponse.Types.ServingStatus Check(string address, string service)
    {
        using var channel = GrpcChannel.ForAddress(address);
        return new Health.HealthClient(channel).Check(new HealthCheckRequest { Service = service }, deadline: DateTime.UtcNow.AddSeconds(10)).Status;
    }

    [Fact]
    public async Task Coordinator_and_workers_answer_liveness_and_readiness()
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, Check(cluster.Address, ""));
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, Check(cluster.Address, CoordinatorHost.ReadinessService));
        var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single().Address;
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, Check(worker, ""));
        // Readiness follows registration: a heartbeat after registering sets it.
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (Check(worker, WorkerHost.ReadinessService) != HealthCheckResponse.Types.ServingStatus.Serving)
        {
            Assert.True(DateTime.UtcNow < deadline, "worker readiness never became SERVING");
            await Task.Delay(50);
        }
        using var channel = GrpcChannel.ForAddress(cluster.Address);
        var e = Assert.Throws<RpcException>(() => new Health.HealthClient(channel).Check(new HealthCheckRequest { Service = "no.such.Service" }));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
    }

    [Fact]
    public async Task Health_command_exits_0_when_serving_and_1_otherwise()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var up = CliRunner.Run(tmp.Path, "health", cluster.Address, "--service", CoordinatorHost.ReadinessService);
        Assert.True(up.ExitCode == 0, up.ToString());
        Assert.Contains("SERVING", up.Stdout);

        var unknown = CliRunner.Run(tmp.Path, "health", cluster.Address, "--service", "no.such.Service");
        Assert.Equal(1, unknown.ExitCode);
        Assert.Contains("UNKNOWN SERVICE", unknown.Stdout);

        using var closed = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        closed.Start();
        var port = ((IPEndPoint)closed.LocalEndpoint).Port;
        closed.Stop();
        var down = CliRunner.Run(tmp.Path, "health", $"http://127.0.0.1:{port}", "--timeout", "3");
        Assert.Equal(1, down.ExitCode);
        Assert.Contains("UNREACHABLE", down.Stdout);

        var bad = CliRunner.Run(tmp.Path, "health", "not-a-url");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("not-a-url", bad.Stderr);
    }

    [Theory]
    [InlineData("1", 1)]
    [InlineData("3", 3)]
    [InlineData("0", 1)]
    [InlineData(" 2 ", 2)]
    public void Worker_threads_take_a_number(string value, int expected)
    {
        Assert.True(WorkerOptions.TryResolveThreads(value, out var n));
        Assert.Equal(expected, n);
    }

    [Fact]
    public void Worker_threads_auto_is_the_cpus_this_process_may_use()
    {
        // .NET derives ProcessorCount from the cgroup CPU quota and the affinity mask: a container's CPUs.
        Assert.True(WorkerOptions.TryResolveThreads("auto", out var n));
        Assert.Equal(Environment.ProcessorCount, n);
        Assert.Equal(Environment.ProcessorCount, new WorkerOptions { Threads = "AUTO" }.ResolvedThreads);
    }

    [Theory]
    [InlineData("many")]
    [InlineData("-1")]
    [InlineData("2000")]
    [InlineData("")]
    public void Bad_worker_threads_are_refused_naming_the_key(string value)
    {
        Assert.False(WorkerOptions.TryResolveThreads(value, out _));
        var error = Assert.Single(new WorkerOptions { Threads = value }.Validate());
        Assert.Contains("Worker:Threads", error);
        Assert.Contains("auto", error);
    }

    [Fact]
    public void Advertised_host_is_the_option_else_the_listen_address_else_a_non_loopback_ip()
    {
        Assert.Equal("10.1.2.3", WorkerHost.AdvertisedHost(new WorkerOptions { Listen = "0.0.0.0", AdvertiseHost = "10.1.2.3" }));
        Assert.Equal("127.0.0.1", WorkerHost.AdvertisedHost(new WorkerOptions { Listen = "127.0.0.1" }));
        var auto = WorkerHost.AdvertisedHost(new WorkerOptions { Listen = "0.0.0.0" });
        // A container's own address (what peers on its network dial), never loopback; the host name only without any.
        if (IPAddress.TryParse(auto, out var ip)) Assert.False(IPAddress.IsLoopback(ip), auto);
        else Assert.Equal(Dns.GetHostName(), auto);
    }

    [Fact]
    public async Task Job_numbers_continue_after_the_job_directories_already_on_the_data_dir()
    {
        using var tmp = new TempDir();
        var dataDir = Path.Combine(tmp.Path, "coordinator");
        Directory.CreateDirectory(Path.Combine(dataDir, "jobs", "job-0007", "checkpoints"));
        Directory.CreateDirectory(Path.Combine(dataDir, "jobs", "job-0003"));
        var app = CoordinatorHost.Build(new CoordinatorOptions { Port = 0, DataDir = dataDir }, l => l.SetMinimumLevel(LogLevel.Warning));
        await app.StartAsync();
        try
        {
            using var channel = GrpcChannel.ForAddress(CoordinatorHost.Address(app));
            var client = new Jobs.JobsClient(channel);
            tmp.Write("t.txt", TestJobs.Text());
            var spec = tmp.Write("job.json", Dtrain.Specs.JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt")));
            var id = client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(client, new FileInfo(spec), 1)).JobId;
            Assert.Equal("job-0008", id);
            client.Cancel(new CancelJobRequest { JobId = id });
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }
}
