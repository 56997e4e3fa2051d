using System.Collections.Concurrent;
using System.Net.Http.Headers;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Protos.Worker;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using static TorchSharp.torch;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A native (libtorch) error in a worker's step fails the job with one line naming the worker and the step; the
/// error's native stack trace — "Exception raised from ... at /pytorch/...", frames with this machine's library
/// paths — goes to the logs only: not to the job's message in `dtrain list`, `dtrain status` or /api.
/// </summary>
public class NativeErrorTests
{
    /// <summary>At RunStep <paramref name="at"/> the step fails with a real libtorch error (a view of 2 elements as 5), as a native failure inside the step would.</summary>
    sealed class NativeFailure(long at) : Interceptor
    {
        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (request is RunStepRequest step && step.Step == at)
            {
                using var two = ones(2);
                using var bad = two.view(5);
            }
            return await continuation(request, context);
        }
    }

    sealed class Capture : ILoggerProvider
    {
        public ConcurrentQueue<string> Lines { get; } = new();
        public ILogger CreateLogger(string categoryName) => new Logger(this);
        public void Dispose() { }

        sealed class Logger(Capture capture) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                capture.Lines.Enqueue(formatter(state, exception) + (exception is null ? "" : "\n" + exception));
        }
    }

    static readonly string[] NativeTrace = ["Exception raised from", "frame #", ".so", "\n", AppContext.BaseDirectory];

    [Fact]
    public async Task A_native_error_in_a_step_reaches_users_as_one_line_naming_worker_and_step_and_its_trace_only_the_logs()
    {
        var workerLog = new Capture();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { HttpPort = 0 });
        await cluster.AddWorkerAsync();
        await cluster.AddWorkerAsync(configure: b =>
        {
            b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<NativeFailure>(3L));
            b.Logging.AddProvider(workerLog);
        });
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
        var failing = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.Name == "test-2");

        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(100));
        var spec = tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 1000)));
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(spec), 2)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));

        Assert.Equal(JobState.Failed, info.State);
        // One line: the worker, the step, and libtorch's own first line.
        Assert.Contains($"worker {failing.WorkerId} ", info.Message);
        Assert.Contains("at step 3: Internal: shape '[5]' is invalid for input of size 2", info.Message);
        foreach (var trace in NativeTrace) Assert.DoesNotContain(trace, info.Message);

        // Nor in `dtrain list`, `dtrain status` or the dashboard's API.
        var env = new Dictionary<string, string?> { ["HOME"] = tmp.Path, ["DTRAIN_TOKEN"] = cluster.AdminToken, ["DTRAIN_COORDINATOR"] = cluster.Address };
        foreach (var verb in new[] { new[] { "list" }, ["status", id] })
        {
            var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), env, verb);
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Contains("shape '[5]' is invalid", r.Stdout + r.Stderr);
            foreach (var trace in NativeTrace.Where(t => t != "\n")) Assert.DoesNotContain(trace, r.Stdout + r.Stderr);
        }
        using var http = new HttpClient { BaseAddress = new Uri(cluster.HttpAddress!) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", cluster.AdminToken);
        foreach (var path in new[] { "/api/jobs", $"/api/jobs/{id}" })
        {
            var body = await http.GetStringAsync(path);
            Assert.Contains("is invalid for input of size 2", body);
            foreach (var trace in new[] { "Exception raised from", "frame #", "libtorch_cpu.so" }) Assert.DoesNotContain(trace, body);
        }

        // The whole native text is in the worker's log (where the error happened).
        Assert.Contains(workerLog.Lines, l => l.Contains("shape '[5]' is invalid", StringComparison.Ordinal) && l.Contains("frame #", StringComparison.Ordinal));
    }

    [Fact]
    public void The_first_line_of_an_error_is_its_first_line_that_is_not_blank()
    {
        Assert.Equal("Unknown scalar type.", Dtrain.Rpc.ErrorText.FirstLine("\n  Unknown scalar type.  \nException raised from toDouble at /pytorch/c10/core/Scalar.h:140\nframe #0: x"));
        Assert.Equal("", Dtrain.Rpc.ErrorText.FirstLine(null));
        Assert.Equal("one", Dtrain.Rpc.ErrorText.FirstLine("one"));
    }
}
