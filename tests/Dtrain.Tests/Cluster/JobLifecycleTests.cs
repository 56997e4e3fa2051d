using Dtrain.Server;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cluster;

/// <summary>The one transition table of a job's state: every allowed transition, refused ones are typed errors, and a job's state changes only through it.</summary>
public class JobLifecycleTests
{
    public static TheoryData<JobStatus, JobTrigger, JobStatus> Allowed
    {
        get
        {
            var rows = new TheoryData<JobStatus, JobTrigger, JobStatus>
            {
                { JobStatus.Queued, JobTrigger.Start, JobStatus.Preparing },
                { JobStatus.Preparing, JobTrigger.Run, JobStatus.Running },
                { JobStatus.Running, JobTrigger.Run, JobStatus.Running },
                { JobStatus.Waiting, JobTrigger.Run, JobStatus.Running },
                { JobStatus.Preparing, JobTrigger.Wait, JobStatus.Waiting },
                { JobStatus.Running, JobTrigger.Wait, JobStatus.Waiting },
                { JobStatus.Waiting, JobTrigger.Wait, JobStatus.Waiting },
                { JobStatus.Running, JobTrigger.Succeed, JobStatus.Succeeded },
                { JobStatus.Preparing, JobTrigger.Requeue, JobStatus.Queued },
                { JobStatus.Running, JobTrigger.Requeue, JobStatus.Queued },
                { JobStatus.Waiting, JobTrigger.Requeue, JobStatus.Queued },
            };
            foreach (var from in new[] { JobStatus.Queued, JobStatus.Preparing, JobStatus.Running, JobStatus.Waiting })
            {
                rows.Add(from, JobTrigger.Fail, JobStatus.Failed);
                rows.Add(from, JobTrigger.Cancel, JobStatus.Cancelled);
            }
            return rows;
        }
    }

    [Theory]
    [MemberData(nameof(Allowed))]
    public void Every_allowed_transition_leads_where_the_table_says(JobStatus from, JobTrigger trigger, JobStatus to) =>
        Assert.Equal(to, JobLifecycle.Next("job job-0001", from, trigger));

    [Fact]
    public void The_table_holds_exactly_the_allowed_transitions_and_everything_else_is_refused_with_a_typed_error()
    {
        var allowed = Allowed.Select(row => ((JobStatus)row[0], (JobTrigger)row[1])).ToHashSet();
        Assert.Equal(allowed.Count, JobLifecycle.Table.Count);
        foreach (var from in Enum.GetValues<JobStatus>())
        {
            foreach (var trigger in Enum.GetValues<JobTrigger>())
            {
                Assert.Equal(allowed.Contains((from, trigger)), JobLifecycle.Allows(from, trigger));
                if (!allowed.Contains((from, trigger)))
                    Assert.Equal($"job job-0002: cannot {trigger.ToString().ToLowerInvariant()} while {from.ToString().ToLowerInvariant()}",
                        Assert.Throws<InvalidTransitionException>(() => JobLifecycle.Next("job job-0002", from, trigger)).Message);
            }
        }
        // A finished job stays finished.
        Assert.DoesNotContain(JobLifecycle.Table.Keys, k => JobLifecycle.IsFinished(k.From));
    }

    [Fact]
    public void A_job_record_changes_state_only_through_a_transition_and_the_proto_follows()
    {
        using var tmp = new TempDir();
        var job = new JobRecord("job-0001", TestJobs.CharLm("t.txt"), tmp.Path, 1, DateTimeOffset.UnixEpoch);
        Assert.Equal(JobStatus.Queued, job.Status);
        // Progress holds no state (by its type), so an update of it leaves the state where it was.
        Assert.DoesNotContain(typeof(JobProgress).GetProperties(), p => p.PropertyType == typeof(JobStatus) || p.PropertyType == typeof(Protos.Jobs.JobState));
        job.Update(p => p with { Step = 3, Message = "running, says the update" });
        Assert.Equal((JobStatus.Queued, 3L), (job.Status, job.Progress.Step));
        Assert.Equal(Protos.Jobs.JobState.Queued, job.ToProto().State);
        Assert.Throws<InvalidTransitionException>(() => job.Transition(JobTrigger.Succeed, ""));

        job.Transition(JobTrigger.Start, "preparing data");
        Assert.Equal((Protos.Jobs.JobState.Preparing, "preparing data"), (job.ToProto().State, job.ToProto().Message));
        // Conditional: cancelling "while queued" does nothing to a job that started meanwhile.
        Assert.False(job.TryTransition(JobTrigger.Cancel, "cancelled while queued", when: s => s == JobStatus.Queued));
        Assert.Equal(JobStatus.Preparing, job.Status);
        job.Transition(JobTrigger.Run, "", p => p with { TotalSteps = 7 });
        job.Transition(JobTrigger.Succeed, "");
        Assert.True(job.IsFinished);
        Assert.Equal((Protos.Jobs.JobState.Succeeded, 7L), (job.ToProto().State, job.ToProto().TotalSteps));
        Assert.False(job.TryTransition(JobTrigger.Fail, "too late"));
        Assert.Equal(JobStatus.Succeeded, job.Status);
    }
}
