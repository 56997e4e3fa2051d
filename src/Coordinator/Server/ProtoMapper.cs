using Dtrain.Cluster;
using Dtrain.Distributed;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Training;

namespace Dtrain.Server;

/// <summary>
/// The service edge: domain types (<see cref="JobRecord"/>'s <see cref="JobStatus"/> and <see cref="JobProgress"/>,
/// <see cref="JobNotice"/>, <see cref="LedgerEntry"/>, <see cref="JobSubmission"/>, membership) to and from the protos
/// the gRPC services and the dashboard answer with, and the job store's proto-coded tables (ledger and events; a job
/// store of the first format is read through it once, when migrated). The only place a job's <c>JobInfo</c> is built.
/// </summary>
public static class ProtoMapper
{
    public static WorkerState ToProto(this MembershipState state) => state switch
    {
        MembershipState.Joining => WorkerState.Joining,
        MembershipState.Idle => WorkerState.Idle,
        MembershipState.Training => WorkerState.Training,
        MembershipState.Draining => WorkerState.Draining,
        MembershipState.Cordoned => WorkerState.Cordoned,
        MembershipState.Lost => WorkerState.Lost,
        _ => throw new ArgumentOutOfRangeException(nameof(state), state, "no proto state for it"),
    };

    public static JobState ToProto(this JobStatus status) => status switch
    {
        JobStatus.Queued => JobState.Queued,
        JobStatus.Preparing => JobState.Preparing,
        JobStatus.Running => JobState.Running,
        JobStatus.Waiting => JobState.Waiting,
        JobStatus.Succeeded => JobState.Succeeded,
        JobStatus.Failed => JobState.Failed,
        JobStatus.Cancelled => JobState.Cancelled,
        _ => throw new ArgumentOutOfRangeException(nameof(status), status, "no proto state for it"),
    };

    /// <summary>A job's state in a record of the job store's first format (proto bytes), migrated on open.</summary>
    public static JobStatus FromProto(JobState state) => state switch
    {
        JobState.Queued => JobStatus.Queued,
        JobState.Preparing => JobStatus.Preparing,
        JobState.Running => JobStatus.Running,
        JobState.Waiting => JobStatus.Waiting,
        JobState.Succeeded => JobStatus.Succeeded,
        JobState.Failed => JobStatus.Failed,
        JobState.Cancelled => JobStatus.Cancelled,
        _ => throw new InvalidDataException($"unknown job state {state}"),
    };

    public static WorkerInfo ToInfo(this WorkerRecord w) => new()
    {
        WorkerId = w.Id,
        Name = w.Name,
        Address = w.Address,
        State = w.State.ToProto(),
        JobId = w.JobId,
        Cores = w.Capabilities.Cores,
        Device = w.Capabilities.Device,
        MemoryBytes = w.Capabilities.MemoryBytes,
        Threads = w.Capabilities.Threads,
        LastHeartbeatUnixMs = w.LastHeartbeat.ToUnixTimeMilliseconds(),
        RegisteredUnixMs = w.Registered.ToUnixTimeMilliseconds(),
        Cordoned = w.Cordoned,
        Message = w.Message,
    };

    /// <summary>A worker's registration as the registry takes it, with <paramref name="key"/>: the SHA-256 of its public key ("" without TLS).</summary>
    public static WorkerRegistration FromProto(Protos.Membership.RegisterRequest request, string key) =>
        new(request.Address, request.Name, request.Capabilities is { } c ? new WorkerCapabilities(c.Cores, c.Device, c.MemoryBytes, c.Threads, c.Version) : WorkerCapabilities.Unknown)
        {
            Key = key,
            Cordoned = request.Cordoned,
            HttpAddress = request.HttpAddress,
        };

    /// <summary>What a worker said it was doing with a heartbeat; null when it said nothing.</summary>
    public static ActivitySnapshot? FromProto(Protos.Membership.WorkerActivity? a) => a is null ? null :
        new(a.Phase, a.Detail, a.Step, TimeSpan.FromMilliseconds(a.InPhaseMs), a.WaitingOn, a.JobId, a.SubPhase, a.Piece, a.Pieces, a.Transport);

    /// <summary>The worker as `dtrain status` and `dtrain workers` show it: its activity with the time in phase as of the view's time, and its heartbeat age.</summary>
    public static WorkerInfo ToInfo(this WorkerView view)
    {
        var w = view.Worker;
        var info = w.ToInfo();
        info.HeartbeatAgeMs = (long)(StallDiagnosis.Age(w, view.Now) * 1000);
        if (w.Activity is { } a)
        {
            info.Activity = a.ToProto();
            info.Activity.InPhaseMs += info.HeartbeatAgeMs;
        }
        info.Stalled = view.Stalled;
        return info;
    }

    /// <summary>The job as `dtrain status` shows it, live: a row per worker (no address: where workers run is the operator's business, `dtrain workers`) and the stall line.</summary>
    public static JobInfo ToProto(this JobRecord job, JobView view)
    {
        var info = job.ToProto(view.Status, view.Progress);
        foreach (var w in view.Workers)
        {
            var row = w.ToInfo();
            row.Address = "";
            if (!view.Names) row.Name = "";
            info.WorkerRows.Add(row);
        }
        if (view.Stall is not null) info.Stall = view.Stall;
        return info;
    }

    /// <summary>The job as the gRPC services, the dashboard and `dtrain status` show it: the only place a job's <see cref="JobInfo"/> is built.</summary>
    public static JobInfo ToProto(this JobRecord job)
    {
        var (status, progress) = job.Read();
        return job.ToProto(status, progress);
    }

    /// <summary>The job with this state and progress (read together, under the record's lock).</summary>
    public static JobInfo ToProto(this JobRecord job, JobStatus status, JobProgress p)
    {
        var info = new JobInfo
        {
            JobId = job.Id,
            Name = job.Spec.Name,
            Task = job.Spec.Task,
            Owner = job.Owner,
            StoredBytes = job.StoredBytes,
            WorkersRequested = job.WorkersRequested,
            SubmittedUnixMs = job.Submitted.ToUnixTimeMilliseconds(),
            State = status.ToProto(),
            Message = job.AsSubmitted(p.Message),
            Step = p.Step,
            TotalSteps = p.TotalSteps,
            Epoch = p.Epoch,
            Loss = p.Loss,
            SamplesPerSecond = p.SamplesPerSecond,
            StartedUnixMs = p.Started?.ToUnixTimeMilliseconds() ?? 0,
            FinishedUnixMs = p.Finished?.ToUnixTimeMilliseconds() ?? 0,
            // Its file name (what `dtrain download` and /api/jobs/J/checkpoints/NAME fetch), not where this coordinator keeps it.
            Checkpoint = Path.GetFileName(p.Checkpoint),
            CheckpointSeconds = p.CheckpointSeconds,
            CheckpointBytes = p.CheckpointBytes,
            Parameters = p.Parameters,
            ResumedFrom = p.ResumedFrom,
            StartStep = p.StartStep,
            MinWorkers = p.MinWorkers,
            MaxWorkers = p.MaxWorkers,
            Generation = p.Generation,
            Restarts = p.Restarts,
            LastEval = p.LastEval?.ToProto(),
        };
        info.WorkerIds.AddRange(p.WorkerIds);
        return info;
    }

    public static LedgerStep ToProto(this LedgerEntry e)
    {
        var step = new LedgerStep { Step = e.Step, Epoch = e.Epoch, StepInEpoch = e.StepInEpoch, Rows = e.Rows, Generation = e.Generation };
        step.Shares.AddRange(e.Shares.Select(s => new LedgerShare { WorkerId = s.WorkerId, FirstRow = s.FirstRow, Rows = s.Rows }));
        return step;
    }

    public static LedgerEntry FromProto(LedgerStep s) =>
        new(s.Step, s.Epoch, s.StepInEpoch, s.Rows, s.Generation, [.. s.Shares.Select(x => new RowShare(x.WorkerId, x.FirstRow, x.Rows))]);

    /// <summary>The ledger as `dtrain status --ledger` gets it.</summary>
    public static LedgerReply ToProto(IEnumerable<LedgerEntry> ledger)
    {
        var reply = new LedgerReply();
        reply.Steps.AddRange(ledger.Select(e => e.ToProto()));
        return reply;
    }

    /// <summary>A ledger as the Ledger RPC answered it, e.g. to <see cref="SampleLedger.Check"/> it.</summary>
    public static IReadOnlyList<LedgerEntry> FromProto(LedgerReply reply) => [.. reply.Steps.Select(FromProto)];

    /// <summary>A Submit request as the job manager takes it.</summary>
    public static JobSubmission FromProto(this SubmitRequest r) => new()
    {
        SpecJson = r.SpecJson,
        Workers = r.Workers,
        Source = r.Source,
        SpecDir = r.SpecDir,
        Files = r.Files.ToDictionary(f => f.Key, f => f.Value.Memory, StringComparer.Ordinal),
        UploadedFiles = r.UploadedFiles.ToDictionary(f => f.Key, f => f.Value, StringComparer.Ordinal),
        ResumeJob = r.ResumeJob,
        ResumeUpload = r.ResumeUpload,
        MinWorkers = r.MinWorkers,
        MaxWorkers = r.MaxWorkers,
    };

    /// <summary>A notice of <paramref name="job"/> as the Watch and History RPCs stream it.</summary>
    public static JobEvent ToProto(this JobRecord job, JobNotice notice) =>
        notice is JobNotice.State s ? new JobEvent { State = job.ToProto(s.Status, s.Progress) } : EventOf(notice);

    /// <summary>A step, evaluation or log notice as a proto event (a state notice needs its job: <see cref="ToProto(JobRecord, JobNotice)"/>); the store keeps step and evaluation events so.</summary>
    public static JobEvent EventOf(JobNotice notice) => notice switch
    {
        JobNotice.Step s => new JobEvent { Step = s.Report.ToProto() },
        JobNotice.Eval v => new JobEvent { Eval = new EvalEvent { Step = v.AtStep, Metrics = v.Metrics.ToProto() } },
        JobNotice.Log l => new JobEvent { Log = l.Text },
        _ => throw new ArgumentException($"a {notice.GetType().Name} notice needs its job", nameof(notice)),
    };

    /// <summary>A stored step or evaluation event.</summary>
    public static JobNotice FromProto(JobEvent e) => e.KindCase switch
    {
        JobEvent.KindOneofCase.Step => new JobNotice.Step(FromProto(e.Step)),
        JobEvent.KindOneofCase.Eval => new JobNotice.Eval(e.Eval.Step, FromProto(e.Eval.Metrics ?? new Metrics())),
        JobEvent.KindOneofCase.Log => new JobNotice.Log(e.Log),
        _ => throw new InvalidDataException($"a stored event of kind {e.KindCase}: only steps, evaluations and log lines are kept"),
    };

    public static StepEvent ToProto(this StepReport s)
    {
        var e = new StepEvent
        {
            Step = s.Step, TotalSteps = s.TotalSteps, Epoch = s.Epoch, Loss = s.Loss, Lr = s.Lr, SamplesPerSecond = s.SamplesPerSecond,
            ElapsedSeconds = s.ElapsedSeconds, EtaSeconds = s.EtaSeconds, Workers = s.Workers, ComputeMs = s.ComputeMs, AllreduceMs = s.AllreduceMs,
            StepMs = s.StepMs, Bubble = s.Bubble, Skipped = s.Skipped, Nonfinite = s.Nonfinite, GradNorm = s.GradNorm, DataWaitMs = s.DataWaitMs,
        };
        e.StageComputeMs.AddRange(s.StageComputeMs);
        return e;
    }

    public static StepReport FromProto(StepEvent e) => new()
    {
        Step = e.Step, TotalSteps = e.TotalSteps, Epoch = e.Epoch, Loss = e.Loss, Lr = e.Lr, SamplesPerSecond = e.SamplesPerSecond,
        ElapsedSeconds = e.ElapsedSeconds, EtaSeconds = e.EtaSeconds, Workers = e.Workers, ComputeMs = e.ComputeMs, AllreduceMs = e.AllreduceMs,
        StepMs = e.StepMs, StageComputeMs = [.. e.StageComputeMs], Bubble = e.Bubble, Skipped = e.Skipped, Nonfinite = e.Nonfinite, GradNorm = e.GradNorm, DataWaitMs = e.DataWaitMs,
    };

    public static Metrics ToProto(this EvalMetrics m)
    {
        var proto = new Metrics { Loss = m.Loss, Count = m.Count };
        if (m.Accuracy is { } a) proto.Accuracy = a;
        if (m.MacroF1 is { } f) proto.MacroF1 = f;
        if (m.Perplexity is { } pp) proto.Perplexity = pp;
        if (m.BitsPerToken is { } b) proto.BitsPerToken = b;
        return proto;
    }

    public static EvalMetrics FromProto(Metrics m) => new(m.Loss, m.Count)
    {
        Accuracy = m.HasAccuracy ? m.Accuracy : null,
        MacroF1 = m.HasMacroF1 ? m.MacroF1 : null,
        Perplexity = m.HasPerplexity ? m.Perplexity : null,
        BitsPerToken = m.HasBitsPerToken ? m.BitsPerToken : null,
    };

    /// <summary>A job record of the job store's first format (its <see cref="JobInfo"/> as proto bytes), for the migration to the current one.</summary>
    public static JobDocument FromProto(JobInfo i) => new(i.JobId, i.Name, i.Task, i.Owner, i.WorkersRequested, DateTimeOffset.FromUnixTimeMilliseconds(i.SubmittedUnixMs), FromProto(i.State), new JobProgress
    {
        Message = i.Message,
        WorkerIds = [.. i.WorkerIds],
        Step = i.Step,
        TotalSteps = i.TotalSteps,
        Epoch = i.Epoch,
        Loss = i.Loss,
        SamplesPerSecond = i.SamplesPerSecond,
        LastEval = i.LastEval is { } m ? FromProto(m) : null,
        Started = i.StartedUnixMs > 0 ? DateTimeOffset.FromUnixTimeMilliseconds(i.StartedUnixMs) : null,
        Finished = i.FinishedUnixMs > 0 ? DateTimeOffset.FromUnixTimeMilliseconds(i.FinishedUnixMs) : null,
        Checkpoint = i.Checkpoint,
        CheckpointSeconds = i.CheckpointSeconds,
        CheckpointBytes = i.CheckpointBytes,
        Parameters = i.Parameters,
        ResumedFrom = i.ResumedFrom,
        StartStep = i.StartStep,
        MinWorkers = i.MinWorkers,
        MaxWorkers = i.MaxWorkers,
        Generation = i.Generation,
        Restarts = i.Restarts,
    });
}
