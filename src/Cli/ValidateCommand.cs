using System.CommandLine;
using Dtrain.Distributed.Pipeline;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Cli;

/// <summary>`dtrain validate job.json`: checks a spec without training.</summary>
public static class ValidateCommand
{
    public static Command Create()
    {
        var spec = new Argument<FileInfo>("spec") { Description = "Job spec (JSON) to check." };
        var budget = TrainCommand.MemoryBudgetOption();
        var cmd = new Command("validate",
            "Check a job spec: every field, its type and range; unknown fields are errors; and that training it in one process fits the memory " +
            "(--memory-budget; the data is not read, so the smallest vocabulary is assumed). Prints the spec with defaults filled in.");
        cmd.Arguments.Add(spec);
        cmd.Options.Add(budget);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var file = r.GetValue(spec)!;
            var parsed = JobSpecSerializer.Load(file.FullName);
            var memory = TrainCommand.Budget(r.GetValue(budget));
            // A pipelined job runs on a cluster, where each worker holds a stage: `dtrain plan` checks that.
            JobSpecValidator.ThrowIfNotRunnable(parsed, file.Name, onCluster: true, memory);
            Console.WriteLine(JobSpecSerializer.Serialize(parsed));
            if (parsed.Parallelism?.Pipeline is null)
            {
                var need = TrainingMemory.Estimate(parsed, TrainingMemory.MinimumVocabulary, TrainingTasks.For(parsed).Outputs(TrainingMemory.MinimumVocabulary, parsed.Data.Synthetic?.Classes ?? 2), parsed.Training.BatchSize);
                Console.Error.WriteLine($"{file.Name}: valid; training in one process needs at least {PipelinePlan.Mb(need.Total)} MB (before the vocabulary is known) of {memory.Describe()}");
            }
            else
            {
                Console.Error.WriteLine($"{file.Name}: valid; its pipeline runs on a cluster: `dtrain plan {file.Name} --workers N --memory-budget MB` shows each stage's memory");
            }
            return CliErrors.Ok;
        }));
        return cmd;
    }
}
