using System.Diagnostics;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;

namespace Dtrain.E2E.Support;

/// <summary>
/// Reads a coordinator's state over its gRPC API (the same calls `dtrain workers` / `status` make) for the tests'
/// waits and checks; what a user does goes through <see cref="HostCli"/>.
/// </summary>
public sealed class CoordinatorClient : IDisposable
{
    readonly GrpcChannel channel;

    /// <param name="address">http(s)://127.0.0.1:PORT of the cluster.</param>
    /// <param name="tlsDir">The client certificate directory (ca.crt, tls.crt, tls.key) a TLS cluster's `certs init` made, or null.</param>
    /// <param name="token">Sent as a bearer token when not null.</param>
    public CoordinatorClient(string address, string? tlsDir, string? token = null)
    {
        Address = address;
        channel = CliTls.Channel(address, settings: new TlsSettings { Dir = tlsDir });
        Jobs = token is null
            ? new Jobs.JobsClient(channel)
            : new Jobs.JobsClient(channel.Intercept(m => { m.Add("authorization", "Bearer " + token); return m; }));
    }

    public string Address { get; }

    public Jobs.JobsClient Jobs { get; }

    static DateTime Deadline => DateTime.UtcNow.AddSeconds(10);

    public IReadOnlyList<WorkerInfo> Workers() => Jobs.ListWorkers(new ListWorkersRequest(), deadline: Deadline).Workers;

    public JobInfo Job(string id) => Jobs.Get(new GetJobRequest { JobId = id }, deadline: Deadline);

    public IReadOnlyList<JobInfo> List() => Jobs.List(new ListJobsRequest(), deadline: Deadline).Jobs;

    /// <summary>Polls until exactly <paramref name="count"/> workers are registered and all are idle; returns them.</summary>
    public async Task<IReadOnlyList<WorkerInfo>> WaitForIdleWorkersAsync(int count, TimeSpan timeout, string? hint = null)
    {
        var clock = Stopwatch.StartNew();
        var last = "no answer yet";
        while (true)
        {
            try
            {
                var workers = Workers();
                last = Describe(workers);
                if (workers.Count == count && workers.All(w => w.State == WorkerState.Idle)) return workers;
            }
            catch (RpcException e)
            {
                last = $"{e.StatusCode}: {e.Status.Detail}";
            }
            if (clock.Elapsed > timeout) Assert.Fail($"{Address}: not {count} idle workers after {timeout.TotalSeconds:F0} s; last seen: {last}{(hint is null ? "" : $"\n{hint}")}");
            await Task.Delay(250).ConfigureAwait(false);
        }
    }

    /// <summary>Polls until the job has taken at least <paramref name="step"/> steps (fails if it ends first).</summary>
    public async Task<JobInfo> WaitForStepAsync(string id, long step, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var job = Job(id);
            if (job.Step >= step && job.State == JobState.Running) return job;
            Assert.False(IsFinished(job), $"{id} ended before step {step}: {job.State} {job.Message}");
            if (clock.Elapsed > timeout) Assert.Fail($"{id} did not reach step {step} within {timeout.TotalSeconds:F0} s: {job.State} at step {job.Step} {job.Message}");
            await Task.Delay(100).ConfigureAwait(false);
        }
    }

    /// <summary>Polls until the job is succeeded, failed or cancelled.</summary>
    public async Task<JobInfo> WaitForEndAsync(string id, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var job = Job(id);
            if (IsFinished(job)) return job;
            if (clock.Elapsed > timeout) Assert.Fail($"{id} still {job.State} at step {job.Step} after {timeout.TotalSeconds:F0} s: a hang");
            await Task.Delay(100).ConfigureAwait(false);
        }
    }

    public static bool IsFinished(JobInfo job) => job.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled;

    public static string Describe(IEnumerable<WorkerInfo> workers) =>
        string.Join("; ", workers.Select(w => $"{w.WorkerId} {w.Address} {w.State.ToString().ToLowerInvariant()}{(w.JobId == "" ? "" : $" {w.JobId}")} threads {w.Threads}")) is { Length: > 0 } s ? s : "(none)";

    public void Dispose() => channel.Dispose();
}
