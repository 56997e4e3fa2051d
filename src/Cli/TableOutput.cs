using Spectre.Console;

namespace Dtrain.Cli;

/// <summary>Where the remote verbs' tables go.</summary>
public static class TableOutput
{
    /// <summary>The terminal; redirected output (a file, a pipe, a script) gets a table unwrapped instead of squeezed into 80 columns.</summary>
    public static IAnsiConsole Console()
    {
        if (!System.Console.IsOutputRedirected) return AnsiConsole.Console;
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(System.Console.Out), Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors });
        console.Profile.Width = 400;
        return console;
    }
}
