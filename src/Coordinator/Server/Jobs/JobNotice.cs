using Dtrain.Training;

namespace Dtrain.Server;

/// <summary>
/// One committed step as the job's watchers and its metrics history see it (the domain's own type; the proto
/// <c>StepEvent</c> is built from it at the service edge, <see cref="ProtoMapper"/>).
/// </summary>
public sealed record StepReport
{
    public long Step { get; init; }
    public long TotalSteps { get; init; }
    public long Epoch { get; init; }
    public double Loss { get; init; }
    public double Lr { get; init; }
    public double SamplesPerSecond { get; init; }
    public double ElapsedSeconds { get; init; }
    public double EtaSeconds { get; init; }
    public int Workers { get; init; }
    /// <summary>Slowest replica's forward/backward time and all-reduce wait, and the coordinator's whole step time, in milliseconds.</summary>
    public double ComputeMs { get; init; }
    public double AllreduceMs { get; init; }
    public double StepMs { get; init; }
    /// <summary>Pipeline jobs: each stage's compute time, and the share of the step the stages waited for their neighbours.</summary>
    public IReadOnlyList<double> StageComputeMs { get; init; } = [];
    public double Bubble { get; init; }
    /// <summary>The step's loss or gradient was not finite ("loss" or "gradient"): every replica skipped its optimizer step.</summary>
    public bool Skipped { get; init; }
    public string Nonfinite { get; init; } = "";
    public double GradNorm { get; init; }
    /// <summary>Dataset jobs: the longest any replica's step waited for its rows to be read, in milliseconds.</summary>
    public double DataWaitMs { get; init; }
}

/// <summary>
/// What a job's watchers are told, in order (the domain's own type; <see cref="ProtoMapper.ToProto(JobRecord, JobNotice)"/>
/// builds the proto <c>JobEvent</c> the Watch and History RPCs stream): its record after a change, a committed step,
/// an evaluation, or a log line.
/// </summary>
public abstract record JobNotice
{
    private JobNotice() { }

    /// <summary>The job's state and progress after a change.</summary>
    public sealed record State(JobStatus Status, JobProgress Progress) : JobNotice;

    public sealed record Step(StepReport Report) : JobNotice;

    /// <summary>Validation metrics after step <paramref name="AtStep"/>.</summary>
    public sealed record Eval(long AtStep, EvalMetrics Metrics) : JobNotice;

    public sealed record Log(string Text) : JobNotice;
}

/// <summary>
/// A job as submitted (the domain's own type; the Submit RPC's request is mapped to it at the service edge):
/// its spec (empty only to resume a job with that job's spec), how many workers, data files sent with it, and what
/// it resumes from.
/// </summary>
public sealed record JobSubmission
{
    public string SpecJson { get; init; } = "";
    /// <summary>Workers to start with; 0 = all idle workers when the job starts (a pipeline: D × K).</summary>
    public int Workers { get; init; }
    /// <summary>Name of the spec file, for messages only ("" = "submitted spec").</summary>
    public string Source { get; init; } = "";
    /// <summary>The spec file's directory on the submitting machine ("" = unknown): its data paths are relative to it.</summary>
    public string SpecDir { get; init; } = "";
    /// <summary>Small data files sent inline, by the path written in the spec.</summary>
    public IReadOnlyDictionary<string, ReadOnlyMemory<byte>> Files { get; init; } = new Dictionary<string, ReadOnlyMemory<byte>>();
    /// <summary>Data files uploaded beforehand, by the path written in the spec: their upload handles.</summary>
    public IReadOnlyDictionary<string, string> UploadedFiles { get; init; } = new Dictionary<string, string>();
    /// <summary>Resume from the newest checkpoint of this job ("" = not), or from this uploaded checkpoint.</summary>
    public string ResumeJob { get; init; } = "";
    public string ResumeUpload { get; init; } = "";
    /// <summary>Elastic bounds: 0 = the default (1; the number it starts with).</summary>
    public int MinWorkers { get; init; }
    public int MaxWorkers { get; init; }
}
