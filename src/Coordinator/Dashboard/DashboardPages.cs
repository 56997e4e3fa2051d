using System.Net;
using System.Reflection;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.StaticFiles;
using Dtrain.Server;
using static Dtrain.Dashboard.DashboardAccess;

namespace Dtrain.Dashboard;

/// <summary>The dashboard's pages: the single page app (index.html), the login form and logout, and its embedded static files.</summary>
internal static class DashboardPages
{
    const string ResourcePrefix = "dashboard/";

    internal static IResult Page(HttpContext http)
    {
        try
        {
            Authenticate(http);
        }
        catch (Refusal r) when (r.Status == StatusCodes.Status401Unauthorized)
        {
            var next = http.Request.Path + http.Request.QueryString;
            return Results.Redirect("/login?next=" + Uri.EscapeDataString(next));
        }
        catch (Refusal r)
        {
            return Results.Text(WebUtility.HtmlEncode(r.Message), "text/plain", Encoding.UTF8, r.Status);
        }
        http.Response.Headers.CacheControl = "no-store";
        return Results.Text(Resource("index.html")!, "text/html", Encoding.UTF8);
    }

    internal static IResult LoginPage(HttpContext http, string? error, int status)
    {
        var auth = Services(http).Auth.Current();
        var note = auth.Required
            ? "This coordinator requires a token (" + WebUtility.HtmlEncode(auth.Why) + "). Paste one made with <code>dtrain tokens create</code>; it is kept in an HttpOnly cookie for this browser session."
            : "Auth is off on this coordinator (" + WebUtility.HtmlEncode(auth.Why) + "): no token is needed.";
        var html = Resource("login.html")!
            .Replace("{{note}}", note, StringComparison.Ordinal)
            .Replace("{{error}}", error is null ? "" : $"<p class=\"error\" id=\"login-error\">{WebUtility.HtmlEncode(error)}</p>", StringComparison.Ordinal)
            .Replace("{{next}}", WebUtility.HtmlEncode(SafeNext(http.Request.Query["next"].ToString())), StringComparison.Ordinal);
        return Results.Text(html, "text/html", Encoding.UTF8, status);
    }

    /// <summary>
    /// Only a path on this site (no scheme, no "//host"): the login form must not redirect elsewhere. Browsers drop tabs
    /// and newlines from a URL and read a backslash as a slash (so "/\t/evil.example" is "//evil.example"): a path with
    /// a control character, a space or a backslash anywhere is not taken.
    /// </summary>
    internal static string SafeNext(string? next) =>
        next is { Length: > 0 } n && n[0] == '/' && !n.StartsWith("//", StringComparison.Ordinal)
            && n.All(c => c > ' ' && c < 0x7f && c != '\\') ? n : "/";

    internal static async Task<IResult> Login(HttpContext http)
    {
        // The listener has no body limit of its own (gRPC streams need none): a login form is small, anything larger is refused.
        var tooLarge = $"the login form is at most {DashboardEndpoints.MaxLoginBytes / 1024} KiB (a token and the page to go back to)";
        if (http.Request.ContentLength is > DashboardEndpoints.MaxLoginBytes and var length)
            return LoginPage(http, $"request body of {length} bytes refused: {tooLarge}", StatusCodes.Status413PayloadTooLarge);
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit) limit.MaxRequestBodySize = DashboardEndpoints.MaxLoginBytes;
        IFormCollection form;
        try
        {
            form = await http.Request.ReadFormAsync(http.RequestAborted).ConfigureAwait(false);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            return LoginPage(http, $"request body refused: {tooLarge}", StatusCodes.Status413PayloadTooLarge);
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or BadHttpRequestException or IOException)
        {
            return LoginPage(http, $"malformed login form: {e.Message}", StatusCodes.Status400BadRequest);
        }
        var token = form["token"].ToString().Trim();
        var next = SafeNext(form["next"].ToString());
        try
        {
            Services(http).Auth.Authenticate(token.Length == 0 ? null : "Bearer " + token, Peer(http), "dashboard login", "form field");
        }
        catch (AccessDeniedException e)
        {
            return LoginPage(http, e.Message, StatusCodes.Status401Unauthorized);
        }
        http.Response.Cookies.Append(DashboardEndpoints.CookieName, token, new CookieOptions
        {
            HttpOnly = true,
            SameSite = SameSiteMode.Strict,
            Secure = http.Request.IsHttps,
            Path = "/",
            IsEssential = true,
        });
        return Results.Redirect(next);
    }

    internal static IResult Logout(HttpContext http)
    {
        http.Response.Cookies.Delete(DashboardEndpoints.CookieName, new CookieOptions { Path = "/", SameSite = SameSiteMode.Strict, Secure = http.Request.IsHttps, HttpOnly = true });
        return Results.Redirect("/login");
    }

    internal static readonly FileExtensionContentTypeProvider ContentTypes = new();

    /// <summary>The page's own scripts and styles and the vendored uPlot; public (they hold no data).</summary>
    internal static IResult Static(string path)
    {
        if (path.Contains("..", StringComparison.Ordinal)) return Results.NotFound();
        var stream = typeof(DashboardEndpoints).Assembly.GetManifestResourceStream(ResourcePrefix + path);
        if (stream is null) return Results.NotFound();
        if (!ContentTypes.TryGetContentType(path, out var type)) type = "application/octet-stream";
        return Results.Stream(stream, type);
    }

    /// <summary>An embedded file's text (index.html, login.html).</summary>
    internal static string? Resource(string name)
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(ResourcePrefix + name);
        if (stream is null) return null;
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    }
}
