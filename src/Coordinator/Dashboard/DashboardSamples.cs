using Dtrain.Checkpoints;
using Dtrain.Inference;
using Dtrain.Runtime;
using Microsoft.Extensions.Logging;

namespace Dtrain.Dashboard;

/// <summary>
/// The generated sample a language-model job's page shows: text sampled from its newest checkpoint with fixed settings
/// (<see cref="Settings"/>, as `dtrain generate CHECKPOINT` with them), made once per checkpoint on one torch thread
/// of its own and kept until the job's next checkpoint.
/// </summary>
public sealed class DashboardSamples(ILogger<DashboardSamples> log) : IDisposable
{
    public const int Length = 200;
    public const double Temperature = 0.8;
    public const long Seed = 1;
    public static readonly string Settings = $"--length {Length} --temperature {Temperature} --seed {Seed}";

    public sealed record Result(string Text, long Step);

    private readonly Lock gate = new();
    private readonly Dictionary<string, (DateTime Written, Task<Result> Sample)> cache = [];
    private readonly Lazy<TorchThread> torch = new(() => new TorchThread("dashboard-sample", 1));

    public Task<Result> GetAsync(string checkpoint)
    {
        var written = File.GetLastWriteTimeUtc(checkpoint);
        lock (gate)
        {
            if (cache.TryGetValue(checkpoint, out var c) && c.Written == written && !c.Sample.IsFaulted) return c.Sample;
            var task = torch.Value.RunAsync(() => Generate(checkpoint));
            cache[checkpoint] = (written, task);
            // Only the newest checkpoint of each job is asked for: forget older ones.
            foreach (var old in cache.Keys.Where(k => k != checkpoint && Path.GetDirectoryName(k) == Path.GetDirectoryName(checkpoint)).ToList()) cache.Remove(old);
            return task;
        }
    }

    private Result Generate(string checkpoint)
    {
        try
        {
            using var model = TrainedModel.Load(checkpoint, "cpu", w => log.LogWarning("{Warning}", w));
            return new Result(TextGenerator.Generate(model, "", Length, Temperature, 0, Seed), model.State.Step);
        }
        catch (Exception e) when (e is CorruptCheckpointException or IOException or InvalidDataException or ArgumentException)
        {
            log.LogWarning("dashboard sample from {Checkpoint}: {Message}", checkpoint, e.Message);
            // The checkpoint by its file name: the dashboard shows no path on this coordinator.
            return new Result($"(no sample: {e.Message.Replace(checkpoint, Path.GetFileName(checkpoint), StringComparison.Ordinal)})", 0);
        }
    }

    public void Dispose()
    {
        if (torch.IsValueCreated) torch.Value.Dispose();
    }
}
