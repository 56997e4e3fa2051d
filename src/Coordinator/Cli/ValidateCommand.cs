using System.CommandLine;
using Dtrain.Specs;

namespace Dtrain.Cli;

/// <summary>`dtrain validate job.json`: checks a spec without training.</summary>
public static class ValidateCommand
{
    public static Command Create()
    {
        var spec = new Argument<FileInfo>("spec") { Description = "Job spec (JSON) to check." };
        var cmd = new Command("validate", "Check a job spec: every field, its type and range; unknown fields are errors. Prints the spec with defaults filled in.");
        cmd.Arguments.Add(spec);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var parsed = JobSpecSerializer.Load(r.GetValue(spec)!.FullName);
            Console.WriteLine(JobSpecSerializer.Serialize(parsed));
            Console.Error.WriteLine($"{r.GetValue(spec)!.Name}: valid");
            return CliErrors.Ok;
        }));
        return cmd;
    }
}
