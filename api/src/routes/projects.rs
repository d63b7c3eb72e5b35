//! `/projects`: the self-hosted Supabase projects Supascale backs up.
//!
//! The database URL is sealed with the master key before it is stored and
//! never comes back: responses show host, port, database and user only.

use std::path::{Path as FsPath, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, PaginatorTrait, QueryOrder};
use sea_orm::{ColumnTrait, QueryFilter, QuerySelect};
use sqlx::{ConnectOptions, Connection};
use supascale_shared::api_key::Permission;
use supascale_shared::domain::{self, DatabaseTarget};
use supascale_shared::entities::project;
use supascale_shared::project_folders::{FolderRules, ProjectFolders, Refusal};

use super::{ApiTags, page_window};
use crate::answers::Message;
use crate::auth::{Auth, Principal};
use crate::error::{ApiError, ApiResult};
use crate::payload::JsonBody;
use crate::state::AppState;
use crate::timestamp::Timestamp;
use crate::visible::visible_project;

const STATUS_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProject {
    /// A slug: lowercase letters, digits and hyphens (`my-project`).
    pub id: String,
    pub name: String,
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE`. When omitted, built
    /// from the project's `.env` (see the README).
    pub database_url: Option<String>,
    /// The project's docker-compose directory (absolute).
    pub root_dir: String,
    /// Default `<rootDir>/volumes/storage`.
    pub storage_dir: Option<String>,
    /// Default `<rootDir>/volumes/functions`.
    pub functions_dir: Option<String>,
    /// Extra config files or folders to back up besides the standard ones
    /// (absolute, e.g. the db-config volume with pgsodium's root key).
    pub config_paths: Option<Vec<String>>,
    /// A program and its arguments (no shell) run in the project folder
    /// after each database restore, e.g.
    /// `["docker", "compose", "restart", "auth", "storage", "realtime"]`;
    /// its output goes to the restore's events. Setting it needs `admin`.
    pub post_restore_command: Option<Vec<String>>,
}

#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateProject {
    pub name: Option<String>,
    pub database_url: Option<String>,
    pub root_dir: Option<String>,
    pub storage_dir: Option<String>,
    pub functions_dir: Option<String>,
    pub config_paths: Option<Vec<String>>,
    /// See `CreateProject`; `[]` removes it. Needs `admin`.
    pub post_restore_command: Option<Vec<String>>,
}

/// The database a project uses, without its password.
#[derive(Debug, Object)]
pub struct DatabaseInfo {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
}

/// Whether the project's database answers: only on `GET /projects/{id}`,
/// from a short connection check.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ProjectStatus {
    /// The database accepts connections.
    Running,
    /// The database does not answer.
    Stopped,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Project {
    pub id: String,
    pub name: String,
    pub root_dir: String,
    pub storage_dir: String,
    pub functions_dir: String,
    pub config_paths: Vec<String>,
    #[oai(skip_serializing_if_is_none)]
    pub post_restore_command: Option<Vec<String>>,
    pub database: DatabaseInfo,
    // No doc comment here: poem-openapi would wrap the reference in an
    // `allOf`, which some client generators cannot read. See ProjectStatus.
    #[oai(skip_serializing_if_is_none)]
    pub status: Option<ProjectStatus>,
    /// Why a stopped project's database did not answer.
    #[oai(skip_serializing_if_is_none)]
    pub status_detail: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<project::Model> for Project {
    fn from(row: project::Model) -> Self {
        Self {
            id: row.id,
            name: row.name,
            root_dir: row.root_dir,
            storage_dir: row.storage_dir,
            functions_dir: row.functions_dir,
            config_paths: serde_json::from_str(&row.config_paths).unwrap_or_default(),
            post_restore_command: row
                .post_restore_command
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok()),
            database: DatabaseInfo {
                host: row.db_host,
                port: u16::try_from(row.db_port).unwrap_or(5432),
                database: row.db_name,
                user: row.db_user,
            },
            status: None,
            status_detail: None,
            created_at: row.created_at.into(),
            updated_at: row.updated_at.into(),
        }
    }
}

#[derive(Debug, Object)]
pub struct ProjectEnvelope {
    pub success: bool,
    pub project: Project,
}

#[derive(Debug, Object)]
pub struct ProjectList {
    pub projects: Vec<Project>,
    pub pagination: ProjectPagination,
}

#[derive(Debug, Object)]
pub struct ProjectPagination {
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}

#[derive(ApiResponse)]
pub enum ProjectCreated {
    /// The project is registered.
    #[oai(status = 201)]
    Created(Json<ProjectEnvelope>),
}

pub struct ProjectsApi;

#[OpenApi(tag = "ApiTags::Projects")]
impl ProjectsApi {
    /// Register a project
    #[oai(path = "/projects", method = "post", operation_id = "createProject")]
    async fn create(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        body: JsonBody<CreateProject>,
    ) -> ApiResult<ProjectCreated> {
        let principal = auth.principal();
        principal.require(Permission::ProjectsWrite)?;
        let input = body.0;
        if !domain::valid_project_id(&input.id) {
            return Err(ApiError::bad_request(
                "id must be 1 to 63 lowercase letters, digits or hyphens, \
                 starting and ending with a letter or digit",
            ));
        }
        if !principal.may_see(&input.id) {
            return Err(ApiError::forbidden("API key is limited to other projects"));
        }
        let name = valid_name(&input.name)?;
        let root = absolute_dir("rootDir", &input.root_dir)?;
        let storage = optional_dir("storageDir", input.storage_dir.as_deref())?
            .unwrap_or_else(|| root.join("volumes/storage"));
        let functions = optional_dir("functionsDir", input.functions_dir.as_deref())?
            .unwrap_or_else(|| root.join("volumes/functions"));
        let config_paths = config_paths(input.config_paths.unwrap_or_default())?;
        let post_restore = post_restore_command(principal, input.post_restore_command)?;
        let given_url = match input.database_url {
            Some(url) => {
                may_set_database_url(principal)?;
                database_target(&url)?;
                Some(url)
            }
            None => None,
        };
        if project::Entity::find_by_id(input.id.clone())
            .one(&state.db)
            .await?
            .is_some()
        {
            return Err(ApiError::conflict(format!(
                "A project with id {} already exists",
                input.id
            )));
        }
        let folders = check_folders(
            &state,
            principal,
            &input.id,
            ProjectFolders {
                root,
                storage,
                functions,
                config: config_paths,
            },
        )
        .await?;
        let url = match given_url {
            Some(url) => url,
            None => database_url_from_project_env(&folders.root)?,
        };
        let target = database_target(&url)?;
        check_database_identity(&state, &input.id, &url, &target).await?;

        let now = crate::now();
        let row = project::ActiveModel {
            id: Set(input.id),
            name: Set(name),
            database_url_enc: Set(state.master_key.encrypt(&url)),
            db_host: Set(target.host),
            db_port: Set(target.port.into()),
            db_name: Set(target.database),
            db_user: Set(target.user),
            root_dir: Set(path_string(&folders.root)),
            storage_dir: Set(path_string(&folders.storage)),
            functions_dir: Set(path_string(&folders.functions)),
            config_paths: Set(config_json(&folders.config)),
            post_restore_command: Set(post_restore.flatten()),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let row = row.insert(&state.db).await.map_err(|e| {
            // Two creates of the same id racing: the loser sees the primary key.
            if matches!(
                e.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) {
                ApiError::conflict("A project with this id already exists")
            } else {
                e.into()
            }
        })?;
        tracing::info!(project = %row.id, "project registered");
        Ok(ProjectCreated::Created(Json(ProjectEnvelope {
            success: true,
            project: row.into(),
        })))
    }

    /// List projects
    #[oai(path = "/projects", method = "get", operation_id = "listProjects")]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Results per page (1 to 500, default 50).
        limit: Query<Option<i64>>,
        /// Rows to skip (default 0).
        offset: Query<Option<i64>>,
    ) -> ApiResult<Json<ProjectList>> {
        let principal = auth.principal();
        principal.require(Permission::ProjectsRead)?;
        let (limit, offset) = page_window(limit.0, offset.0, 50, 500)?;
        let mut query = project::Entity::find();
        if let Some(ids) = &principal.project_ids {
            query = query.filter(project::Column::Id.is_in(ids.clone()));
        }
        let total = query.clone().count(&state.db).await?;
        let rows = query
            .order_by_asc(project::Column::Id)
            .offset(offset)
            .limit(limit)
            .all(&state.db)
            .await?;
        Ok(Json(ProjectList {
            projects: rows.into_iter().map(Project::from).collect(),
            pagination: ProjectPagination {
                total,
                limit,
                offset,
            },
        }))
    }

    /// Get a project
    ///
    /// With `status`: `running` when its database accepts a connection
    /// within 3 seconds, `stopped` otherwise.
    #[oai(path = "/projects/:id", method = "get", operation_id = "getProject")]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
    ) -> ApiResult<Json<Project>> {
        let principal = auth.principal();
        principal.require(Permission::ProjectsRead)?;
        let row = visible_project(&state, principal, &id.0).await?;
        let url = state
            .master_key
            .decrypt(&row.database_url_enc)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let check = check_database(&url).await;
        let mut project = Project::from(row);
        match check {
            Ok(()) => project.status = Some(ProjectStatus::Running),
            Err(detail) => {
                project.status = Some(ProjectStatus::Stopped);
                project.status_detail = Some(detail);
            }
        }
        Ok(Json(project))
    }

    /// Update a project
    ///
    /// Only the fields given change. Changing `rootDir` moves the storage
    /// and functions folders with it unless they were set explicitly.
    #[oai(
        path = "/projects/:id",
        method = "patch",
        operation_id = "updateProject"
    )]
    async fn update(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        body: JsonBody<UpdateProject>,
    ) -> ApiResult<Json<ProjectEnvelope>> {
        let principal = auth.principal();
        principal.require(Permission::ProjectsWrite)?;
        let row = visible_project(&state, principal, &id.0).await?;
        let input = body.0;
        // Validate everything before changing anything.
        let name = input.name.as_deref().map(valid_name).transpose()?;
        let old_root = PathBuf::from(&row.root_dir);
        let root = input
            .root_dir
            .as_deref()
            .map(|r| absolute_dir("rootDir", r))
            .transpose()?;
        let storage = optional_dir("storageDir", input.storage_dir.as_deref())?;
        let functions = optional_dir("functionsDir", input.functions_dir.as_deref())?;
        let config_paths = input.config_paths.map(config_paths).transpose()?;
        let post_restore = post_restore_command(principal, input.post_restore_command)?;
        let url = input.database_url;
        let target = url.as_deref().map(database_target).transpose()?;
        if url.is_some() {
            may_set_database_url(principal)?;
        }

        let mut active: project::ActiveModel = row.clone().into();
        if let Some(name) = name {
            active.name = Set(name);
        }
        let moves_folders =
            root.is_some() || storage.is_some() || functions.is_some() || config_paths.is_some();
        if moves_folders {
            // The folders as they will be, checked as a whole: moving the
            // root moves the default storage and functions folders with it.
            let mut folders = ProjectFolders::of(&row);
            if let Some(root) = root {
                if row.storage_dir == path_string(&old_root.join("volumes/storage")) {
                    folders.storage = root.join("volumes/storage");
                }
                if row.functions_dir == path_string(&old_root.join("volumes/functions")) {
                    folders.functions = root.join("volumes/functions");
                }
                folders.root = root;
            }
            folders.storage = storage.unwrap_or(folders.storage);
            folders.functions = functions.unwrap_or(folders.functions);
            folders.config = config_paths.unwrap_or(folders.config);
            let folders = check_folders(&state, principal, &row.id, folders).await?;
            active.root_dir = Set(path_string(&folders.root));
            active.storage_dir = Set(path_string(&folders.storage));
            active.functions_dir = Set(path_string(&folders.functions));
            active.config_paths = Set(config_json(&folders.config));
        }
        if let Some(command) = post_restore {
            active.post_restore_command = Set(command);
        }
        if let (Some(url), Some(target)) = (url, target) {
            check_database_identity(&state, &row.id, &url, &target).await?;
            active.database_url_enc = Set(state.master_key.encrypt(&url));
            active.db_host = Set(target.host);
            active.db_port = Set(target.port.into());
            active.db_name = Set(target.database);
            active.db_user = Set(target.user);
        }
        active.updated_at = Set(crate::now());
        let row = active.update(&state.db).await?;
        Ok(Json(ProjectEnvelope {
            success: true,
            project: row.into(),
        }))
    }

    /// Delete a project
    ///
    /// Forgets the project; its backups stay (and keep its name).
    #[oai(
        path = "/projects/:id",
        method = "delete",
        operation_id = "deleteProject"
    )]
    async fn delete(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
    ) -> ApiResult<Json<Message>> {
        let principal = auth.principal();
        principal.require(Permission::ProjectsWrite)?;
        let row = visible_project(&state, principal, &id.0).await?;
        project::Entity::delete_by_id(row.id.clone())
            .exec(&state.db)
            .await?;
        tracing::info!(project = %row.id, "project deleted; its backups are kept");
        Ok(Json(Message {
            success: true,
            message: "Project deleted".into(),
        }))
    }
}

fn valid_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_request("name must be 1 to 200 characters"));
    }
    Ok(name.to_string())
}

fn absolute_dir(field: &str, raw: &str) -> ApiResult<PathBuf> {
    domain::clean_absolute(raw).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{field} must be an absolute path without . or .. parts"
        ))
    })
}

fn optional_dir(field: &str, raw: Option<&str>) -> ApiResult<Option<PathBuf>> {
    raw.map(|r| absolute_dir(field, r)).transpose()
}

/// `postRestoreCommand`, checked: `None` when not given, `Some(None)` to
/// remove it. It runs a program on the workers' machines, so only an
/// unrestricted admin key may set it.
fn post_restore_command(
    principal: &crate::auth::Principal,
    command: Option<Vec<String>>,
) -> ApiResult<Option<Option<String>>> {
    let Some(command) = command else {
        return Ok(None);
    };
    principal.require_unrestricted_admin().map_err(|_| {
        ApiError::forbidden(
            "postRestoreCommand runs a program on the workers: it needs an admin key",
        )
    })?;
    if command.is_empty() {
        return Ok(Some(None));
    }
    if command[0].trim().is_empty() || command.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::bad_request(
            "postRestoreCommand: the first element must name a program, and no element may hold a NUL byte",
        ));
    }
    Ok(Some(Some(
        serde_json::to_string(&command).expect("strings serialise"),
    )))
}

fn config_paths(paths: Vec<String>) -> ApiResult<Vec<PathBuf>> {
    paths
        .iter()
        .map(|p| absolute_dir("configPaths", p))
        .collect()
}

fn config_json(paths: &[PathBuf]) -> String {
    let paths: Vec<String> = paths.iter().map(|p| path_string(p)).collect();
    serde_json::to_string(&paths).expect("strings serialise")
}

/// The folders `asked` for project `id`, resolved, or why not (see
/// `project_folders`): who may name folders, where they may be, and that
/// no other project has them.
async fn check_folders(
    state: &AppState,
    principal: &Principal,
    id: &str,
    asked: ProjectFolders,
) -> ApiResult<ProjectFolders> {
    let others: Vec<(String, ProjectFolders)> = project::Entity::find()
        .filter(project::Column::Id.ne(id))
        .all(&state.db)
        .await?
        .iter()
        .map(|p| (p.id.clone(), ProjectFolders::of(p)))
        .collect();
    let admin = principal.require_unrestricted_admin().is_ok();
    FolderRules::from_config(&state.config)
        .check(&asked, admin, &others)
        .map_err(|refusal| match refusal {
            Refusal::Forbidden(m) => ApiError::forbidden(m),
            Refusal::Invalid(m) => ApiError::bad_request(m),
        })
}

/// A database URL given outright can name any server the workers reach:
/// only an admin key that is not limited to projects may give one. Others
/// register projects whose URL comes from the project's own `.env`.
fn may_set_database_url(principal: &Principal) -> ApiResult<()> {
    principal.require_unrestricted_admin().map_err(|_| {
        ApiError::forbidden(
            "Setting databaseUrl needs the admin permission on a key that is not limited to \
             projects; leave it out to use the database the project's .env describes",
        )
    })
}

/// Refuses a database that is the control plane's (by address, or by the
/// tables it holds when it answers) or another project's.
async fn check_database_identity(
    state: &AppState,
    id: &str,
    url: &str,
    target: &DatabaseTarget,
) -> ApiResult<()> {
    if names_control_plane(state, url, target).await {
        return Err(ApiError::bad_request(
            "databaseUrl names Supascale's own control-plane database; a project's database \
             must be another one",
        ));
    }
    if project_with_database(state, Some(id), target)
        .await?
        .is_some()
    {
        return Err(ApiError::bad_request(
            "databaseUrl names the database of another project; two projects never share a \
             database",
        ));
    }
    Ok(())
}

/// Whether `url` is Supascale's own control plane: by address, or (when it
/// answers now) by the tables it holds.
pub(crate) async fn names_control_plane(
    state: &AppState,
    url: &str,
    target: &DatabaseTarget,
) -> bool {
    supascale_shared::control_plane::is_control_plane_address(&state.config, target).await
        || holds_control_plane(url).await
}

/// The project (other than `except`) whose database `target` is.
pub(crate) async fn project_with_database(
    state: &AppState,
    except: Option<&str>,
    target: &DatabaseTarget,
) -> ApiResult<Option<String>> {
    let mut namesakes = project::Entity::find()
        .filter(project::Column::DbName.eq(target.database.clone()))
        .filter(project::Column::DbPort.eq(i32::from(target.port)));
    if let Some(except) = except {
        namesakes = namesakes.filter(project::Column::Id.ne(except));
    }
    for other in namesakes.all(&state.db).await? {
        if supascale_shared::control_plane::same_server(
            &other.db_host,
            target.port,
            &target.host,
            target.port,
        )
        .await
        {
            return Ok(Some(other.id));
        }
    }
    Ok(None)
}

async fn holds_control_plane(url: &str) -> bool {
    let Ok(options) = sqlx::postgres::PgConnectOptions::from_str(url) else {
        return false;
    };
    let options = options
        .application_name("supascale-identity-check")
        .disable_statement_logging();
    let check = async {
        let mut conn = options.connect().await?;
        let sql = format!(
            "SELECT {}",
            supascale_shared::control_plane::HOLDS_OUR_TABLES
        );
        let ours: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(ours)
    };
    matches!(
        tokio::time::timeout(STATUS_CHECK_TIMEOUT, check).await,
        Ok(Ok(true))
    )
}

fn path_string(path: &FsPath) -> String {
    path.to_string_lossy().into_owned()
}

fn database_target(url: &str) -> ApiResult<DatabaseTarget> {
    domain::parse_database_url(url)
        .map_err(|reason| ApiError::bad_request(format!("databaseUrl {reason}")))
}

fn database_url_from_project_env(root: &FsPath) -> ApiResult<String> {
    let env_path = root.join(".env");
    let vars = domain::read_env_file(&env_path).map_err(|e| {
        ApiError::bad_request(format!(
            "databaseUrl is required: it was not given and {} cannot be read ({e})",
            env_path.display()
        ))
    })?;
    domain::database_url_from_env(&vars).map_err(|reason| {
        ApiError::bad_request(format!(
            "databaseUrl is required: it was not given and {reason}"
        ))
    })
}

/// Connects once with a short timeout. The error names the cause without the URL.
pub async fn check_database(url: &str) -> Result<(), String> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|_| "the stored database URL is not valid".to_string())?
        .application_name("supascale-status-check")
        .disable_statement_logging();
    let attempt = async {
        let mut conn = options.connect().await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        conn.close().await
    };
    match tokio::time::timeout(STATUS_CHECK_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(supascale_shared::redact::redact_urls(&e.to_string())),
        Err(_) => Err(format!(
            "no answer within {} seconds",
            STATUS_CHECK_TIMEOUT.as_secs()
        )),
    }
}
