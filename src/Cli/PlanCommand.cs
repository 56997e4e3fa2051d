using System.CommandLine;
using Dtrain.Distributed.Pipeline;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Cli;

/// <summary>`dtrain plan job.json --workers N`: how a job would be laid out on N workers (data × pipeline), and whether it can run.</summary>
public static class PlanCommand
{
    public static Command Create()
    {
        var spec = new Argument<FileInfo>("spec") { Description = "Job spec (JSON); its parallelism section says how to split the model." };
        var workers = new Option<int>("--workers", "-w") { Description = "Workers the job would get.", DefaultValueFactory = _ => 1 };
        var budget = new Option<double>("--memory-budget") { Description = "Memory per worker in MB (0 = no limit): a stage that needs more is refused." };
        var cmd = new Command("plan",
            "Show how a job splits over N workers: data-parallel replicas × pipeline stages, each stage's layers, parameters and " +
            "memory estimate, and the schedule as a grid of time steps × stages. Refuses layouts that cannot run (exit 2). " +
            "Reads the training data once for the vocabulary size.");
        cmd.Arguments.Add(spec);
        cmd.Options.Add(workers);
        cmd.Options.Add(budget);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var file = r.GetValue(spec)!;
            var job = JobSpecSerializer.Load(file.FullName);
            var mb = r.GetValue(budget);
            if (!(mb >= 0 && double.IsFinite(mb))) throw new ArgumentException($"--memory-budget {mb} must be >= 0");
            // The worker count the coordinator would refuse for this pipeline is refused here too.
            if (r.GetValue(workers) >= 1) JobSpecValidator.PipelineWorkers(job, r.GetValue(workers), file.Name);
            var data = PreparedData.Load(job, file.DirectoryName ?? ".");
            var outputs = TrainingTasks.For(job).Outputs(data.Tokenizer.VocabSize, data.Labels.Count);
            var plan = PipelinePlan.Create(job, r.GetValue(workers), data.Tokenizer.VocabSize, outputs, (long)(mb * 1e6));
            Console.WriteLine($"plan for {file.Name} on {r.GetValue(workers)} worker(s) (vocabulary {data.Tokenizer.VocabSize:N0})");
            Console.Write(plan.Render());
            return CliErrors.Ok;
        }));
        return cmd;
    }
}
