; Inno Setup 6.3+ script for MENDICANT Desktop (Windows x64). Installs the PyInstaller onedir build.
;
;   pyinstaller --noconfirm build.spec                        (on Windows: dist\mendicant-desktop\)
;   iscc /DAppVersion=0.1.0 installer\windows\mendicant.iss   -> dist\mendicant-desktop-0.1.0-windows-x64-setup.exe
;
; installer\windows\build.ps1 runs the whole chain (venv, build, smoke test, iscc, zip).
; Per-user install by default (no admin rights needed on clinic laptops); an administrator can choose
; "install for all users" in the dialog or run the setup with /ALLUSERS. Silent: setup.exe /VERYSILENT /SUPPRESSMSGBOXES.

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#define AppName "MENDICANT Desktop"
#define AppExe "mendicant-desktop.exe"
#define AppCli "mendicant-desktop-cli.exe"
#define SrcDir "..\..\dist\mendicant-desktop"

[Setup]
; Never change AppId: it is how upgrades and the uninstaller find earlier installs.
AppId={{6B1E4C2A-7D3F-4E8B-9A51-2C0D8F6E3B47}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=MENDICANT
AppComments=Offline skin-lesion decision support. Decision support, not a diagnosis.
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog commandline
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0
OutputDir=..\..\dist
OutputBaseFilename=mendicant-desktop-{#AppVersion}-windows-x64-setup
SetupIconFile=..\..\resources\icons\mendicant.ico
UninstallDisplayIcon={app}\{#AppExe}
UninstallDisplayName={#AppName} {#AppVersion}
Compression=lzma2/ultra64
SolidCompression=yes
LZMAUseSeparateProcess=yes
WizardStyle=modern
CloseApplications=yes
RestartApplications=no
; the bundle never needs a reboot: nothing is registered system-wide
AlwaysRestart=no

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[InstallDelete]
; an upgrade replaces the whole bundle: no stale DLLs or model files from the previous version
Type: filesandordirs; Name: "{app}\_internal"

[Files]
Source: "{#SrcDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs
; portable.txt is never installed: an installed copy keeps settings in %LOCALAPPDATA%

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\{#AppExe}"; WorkingDir: "{userdocs}"; Comment: "Skin-lesion decision support (offline)"
Name: "{group}\{#AppName} self-test"; Filename: "{app}\{#AppExe}"; Parameters: "--selftest"; WorkingDir: "{userdocs}"
Name: "{group}\Uninstall {#AppName}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; WorkingDir: "{userdocs}"; Tasks: desktopicon

[Run]
Filename: "{app}\{#AppExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; files the app may write beside itself in portable mode (an installed copy normally writes none)
Type: filesandordirs; Name: "{app}\MENDICANT-settings"
; user settings in %LOCALAPPDATA%\MENDICANT\MENDICANT Desktop are kept on purpose (reinstall keeps them)
