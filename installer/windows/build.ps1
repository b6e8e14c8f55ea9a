# Windows release chain: clean venv -> pip install .[build] -> pyinstaller build.spec -> smoke test
# -> Inno Setup installer + portable zip.   Run from any folder:  powershell -File installer\windows\build.ps1
# Needs: Python 3.11 x64 (py launcher), Inno Setup 6 (iscc.exe on PATH or in its default folder).
param([string]$Python = "py -3.11", [switch]$ReuseVenv)
$ErrorActionPreference = "Stop"
$Root = Resolve-Path "$PSScriptRoot\..\.."
Set-Location $Root
$Version = (Select-String -Path mendicant_desktop\__init__.py -Pattern '__version__\s*=\s*"([^"]+)"').Matches[0].Groups[1].Value
$Venv = "$Root\build\venv-win"
if (-not $ReuseVenv -or -not (Test-Path "$Venv\Scripts\python.exe")) {
  if (Test-Path $Venv) { Remove-Item -Recurse -Force $Venv }
  & cmd /c "$Python -m venv `"$Venv`""
}
$Py = "$Venv\Scripts\python.exe"
& $Py -m pip install --disable-pip-version-check -q ".[build]"
& $Py -m PyInstaller --noconfirm --clean --log-level WARN --distpath "$Root\dist" --workpath "$Root\build\pyinstaller" build.spec
if ($LASTEXITCODE -ne 0) { throw "pyinstaller failed" }
$Cli = "$Root\dist\mendicant-desktop\mendicant-desktop-cli.exe"
# smoke test (console twin: same code, visible output and exit codes)
& $Cli --version; if ($LASTEXITCODE -ne 0) { throw "--version failed" }
$env:QT_QPA_PLATFORM = "offscreen"
& $Cli --selftest; if ($LASTEXITCODE -ne 0) { throw "--selftest failed" }
Remove-Item Env:\QT_QPA_PLATFORM
if (Get-ChildItem -Recurse "$Root\dist\mendicant-desktop" -Filter "torch*") { throw "torch inside the bundle" }
# installer
$Iscc = (Get-Command iscc.exe -ErrorAction SilentlyContinue).Source
if (-not $Iscc) { $Iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe" }
& $Iscc "/DAppVersion=$Version" installer\windows\mendicant.iss
if ($LASTEXITCODE -ne 0) { throw "iscc failed" }
# portable zip: the same bundle plus portable.txt
$Stage = "$Root\build\portable\mendicant-desktop"
if (Test-Path "$Root\build\portable") { Remove-Item -Recurse -Force "$Root\build\portable" }
Copy-Item -Recurse "$Root\dist\mendicant-desktop" $Stage
Set-Content -Path "$Stage\portable.txt" -Value "Settings and logs are kept in MENDICANT-settings beside this file."
Compress-Archive -Path $Stage -DestinationPath "$Root\dist\mendicant-desktop-$Version-windows-x64-portable.zip" -Force
Write-Host "built dist\mendicant-desktop-$Version-windows-x64-setup.exe and the portable zip"
