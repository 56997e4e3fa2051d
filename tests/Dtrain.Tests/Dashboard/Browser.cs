using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;
using OpenQA.Selenium.Support.UI;

namespace Dtrain.Tests.Dashboard;

/// <summary>
/// Headless Chromium driven by chromedriver (Debian's `chromium` and `chromium-driver`: /usr/bin/chromium,
/// /usr/bin/chromedriver; DTRAIN_CHROMIUM / DTRAIN_CHROMEDRIVER override), with a fresh profile and every
/// background network feature off: the machine may have no internet, and without these Chromium waits on lookups.
/// </summary>
public sealed class Browser : IDisposable
{
    public static string ChromiumPath => Environment.GetEnvironmentVariable("DTRAIN_CHROMIUM") ?? "/usr/bin/chromium";
    public static string DriverPath => Environment.GetEnvironmentVariable("DTRAIN_CHROMEDRIVER") ?? "/usr/bin/chromedriver";

    /// <summary>In CI (CI set to anything) or with DTRAIN_REQUIRE_BROWSER=1, a missing browser fails the tests instead of skipping them.</summary>
    public static bool Required =>
        !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("CI")) || Environment.GetEnvironmentVariable("DTRAIN_REQUIRE_BROWSER") == "1";

    public static bool Available => File.Exists(ChromiumPath) && File.Exists(DriverPath);

    public const string SkipReason = "no Chromium: apt-get install -y chromium chromium-driver, or set DTRAIN_REQUIRE_BROWSER=1 to make this a failure";

    private readonly string profile = Directory.CreateTempSubdirectory("dtrain-chromium-").FullName;

    public ChromeDriver Driver { get; }

    public Browser()
    {
        if (!Available)
            throw new InvalidOperationException($"{SkipReason}: {ChromiumPath} or {DriverPath} is missing (CI or DTRAIN_REQUIRE_BROWSER=1 make the browser tests required)");
        var options = new ChromeOptions { BinaryLocation = ChromiumPath };
        options.AddArguments("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1800", $"--user-data-dir={profile}");
        var service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(DriverPath)!, Path.GetFileName(DriverPath));
        service.SuppressInitialDiagnosticInformation = true;
        service.HideCommandPromptWindow = true;
        Driver = new ChromeDriver(service, options, TimeSpan.FromMinutes(2));
        Driver.Manage().Timeouts().PageLoad = TimeSpan.FromMinutes(1);
        // Every page notes what its Content-Security-Policy blocked (see CspViolations); this script is the browser's, not the page's.
        Driver.ExecuteCdpCommand("Page.addScriptToEvaluateOnNewDocument", new Dictionary<string, object?>
        {
            ["source"] = "window.__cspViolations = []; document.addEventListener('securitypolicyviolation', e => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));",
        });
    }

    /// <summary>What the current page's Content-Security-Policy refused so far (an inline style or script, another origin): should be nothing.</summary>
    public IReadOnlyList<string> CspViolations() =>
        Script("return window.__cspViolations || [];") is IEnumerable<object> list ? [.. list.Select(o => o?.ToString() ?? "")] : [];

    /// <summary>Waits (bounded, generous for a loaded machine) until <paramref name="condition"/> holds; the failure names <paramref name="what"/>.</summary>
    public T Wait<T>(Func<IWebDriver, T> condition, string what, int seconds = 90)
    {
        var wait = new WebDriverWait(Driver, TimeSpan.FromSeconds(seconds)) { Message = what };
        wait.IgnoreExceptionTypes(typeof(NoSuchElementException), typeof(StaleElementReferenceException));
        return wait.Until(condition);
    }

    public object? Script(string script, params object[] args) => Driver.ExecuteScript(script, args);

    /// <summary>Saves a screenshot as a test artifact under the test output's TestResults/browser and returns its path.</summary>
    public string Screenshot(string name)
    {
        var dir = Path.Combine(AppContext.BaseDirectory, "TestResults", "browser");
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, name + ".png");
        Driver.GetScreenshot().SaveAsFile(path);
        return path;
    }

    public void Dispose()
    {
        try { Driver.Quit(); } catch (WebDriverException) { }
        Driver.Dispose();
        try { Directory.Delete(profile, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>A test that needs Chromium: skipped without it, unless CI or DTRAIN_REQUIRE_BROWSER=1 make that a failure.</summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class BrowserFactAttribute : FactAttribute
{
    public BrowserFactAttribute()
    {
        if (!Browser.Required && !Browser.Available) Skip = $"{Browser.SkipReason} ({Browser.ChromiumPath}, {Browser.DriverPath})";
    }
}
